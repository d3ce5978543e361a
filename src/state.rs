//! The service's durable state beside the log: one owner for the WAL's metadata tree.
//!
//! Owns: every key of that tree (`Key`, one encoder) and the typed value under each:
//! a connector's target state, its config (for connectors created through the API), the
//! barriers left by offset changes, the group offsets followed at a start and those
//! kafka-direct committed, the dead-letter floors and the schema versions.
//!
//! Guarantees: keys are built from *terminated* components, so no connector's keys are a
//! prefix of another's (`orders` and `orders-eu` share nothing); every value decodes
//! through one function per kind, and a value that does not decode is reported with its
//! key. Writes are durable with the next [`Wal::commit`]; `State::put_schema` returns the
//! write mark its caller makes durable ([`Wal::commit_through`]) before anything names
//! the version downstream. State written by builds before this encoding is rewritten
//! once by `State::upgrade` when the WAL is opened ([`open`]).

use std::collections::BTreeMap;

use crate::format::schema::Schema;
use crate::record::SourcePartition;
use crate::wal::{Wal, WalError};

/// Opens the WAL in `dir` with its state in this build's encoding: state written by an
/// earlier build is rewritten (`State::upgrade`) and synced before this returns.
pub fn open(dir: &std::path::Path, options: crate::wal::WalOptions) -> Result<Wal, WalError> {
    let wal = Wal::open(dir, options)?;
    let moved = State::of(&wal).upgrade()?;
    if moved > 0 {
        wal.sync_blocking()?;
        tracing::info!(
            keys = moved,
            "service state rewritten in this build's key encoding"
        );
    }
    Ok(wal)
}

/// What a connector's tasks should be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Fetch and forward.
    Running,
    /// Hold: no fetch and no produce is started (one in flight finishes).
    Paused,
    /// No tasks: they are stopped (the state in which offsets may be changed).
    Stopped,
}

/// The dead-letter bookkeeping of one connector.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct DeadLetterFloors {
    /// Per dead-letter partition: every dead letter below this offset is counted in `next`.
    pub(crate) floors: BTreeMap<i32, i64>,
    /// (topic, partition, next source offset after its last dead letter).
    pub(crate) next: Vec<(String, i32, i64)>,
}

/// What kafka-direct committed to its group for one partition, so that a start knows
/// its own offsets where the broker does not keep the commit's metadata (tansu 0.6).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct GroupCommits {
    /// The group they were committed to (`group.id` may change).
    pub(crate) group: String,
    /// The last offset the group answered for.
    pub(crate) confirmed: Option<i64>,
    /// The offsets sent since whose answer was lost, and the last one sent (the last
    /// [`GroupCommits::KEPT`]): each may be what the group holds.
    pub(crate) sent: Vec<i64>,
    /// Whether the group was seen to keep kafka-direct's metadata: then the metadata
    /// alone tells its offsets from anyone else's.
    pub(crate) metadata_kept: bool,
}

impl GroupCommits {
    /// How many sent offsets are kept: a commit whose answer was lost cannot still
    /// land after that many later commits (each bounded by `request.timeout.ms`).
    pub(crate) const KEPT: usize = 16;

    /// Whether the group holding `offset` may be kafka-direct's own commit.
    pub(crate) fn may_hold(&self, offset: i64) -> bool {
        self.confirmed == Some(offset) || self.sent.contains(&offset)
    }
}

/// A connector's settings as given to the API (dotted keys without `connector.`).
pub(crate) type Settings = BTreeMap<String, String>;

/// A key of the metadata tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key<'a> {
    /// A connector's target, when it is not [`Target::Running`].
    Target { connector: &'a str },
    /// A connector created through the API: its settings.
    Config { connector: &'a str },
    /// The internal offset below which records predate an offset change.
    Barrier {
        connector: &'a str,
        partition: &'a SourcePartition,
    },
    /// The dead-letter floors of a connector.
    DeadLetters { connector: &'a str },
    /// The group offset of `partition` last followed at a start (a reset made with
    /// the group's tools), until kafka-direct's own commit replaces it in the group.
    GroupReset {
        connector: &'a str,
        partition: &'a SourcePartition,
    },
    /// The offsets kafka-direct last committed to its group for `partition`: the last
    /// one the group confirmed and the last one sent (written before it is sent).
    GroupCommit {
        connector: &'a str,
        partition: &'a SourcePartition,
    },
    /// One version of a subject's schema.
    Schema {
        connector: &'a str,
        subject: &'a str,
        version: u32,
    },
}

/// The first byte of every key of this encoding (the keys of earlier builds are text).
const ENCODING: u8 = 0x02;

/// The kinds, the key's second byte.
mod kind {
    pub(super) const TARGET: u8 = 1;
    pub(super) const CONFIG: u8 = 2;
    pub(super) const BARRIER: u8 = 3;
    pub(super) const DEAD_LETTERS: u8 = 4;
    pub(super) const SCHEMA: u8 = 5;
    pub(super) const GROUP_RESET: u8 = 6;
    pub(super) const GROUP_COMMIT: u8 = 7;
}

/// Appends `text` as one terminated component: NUL is escaped as `00 FF` and the
/// component ends with `00 01`, so a component is never a prefix of a longer one.
fn push_text(key: &mut Vec<u8>, text: &str) {
    for &b in text.as_bytes() {
        key.push(b);
        if b == 0 {
            key.push(0xff);
        }
    }
    key.extend_from_slice(&[0, 1]);
}

/// Reads one component written by [`push_text`]; the rest after it.
fn take_text(key: &[u8]) -> Option<(String, &[u8])> {
    let mut text = Vec::new();
    let mut i = 0;
    loop {
        match (key.get(i)?, key.get(i + 1)) {
            (0, Some(0xff)) => text.push(0),
            (0, Some(1)) => return Some((String::from_utf8(text).ok()?, &key[i + 2..])),
            (0, _) => return None,
            (&b, _) => {
                text.push(b);
                i += 1;
                continue;
            }
        }
        i += 2;
    }
}

impl Key<'_> {
    /// The key's bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        match *self {
            Key::Target { connector } => connector_prefix(kind::TARGET, connector),
            Key::Config { connector } => connector_prefix(kind::CONFIG, connector),
            Key::DeadLetters { connector } => connector_prefix(kind::DEAD_LETTERS, connector),
            Key::Barrier {
                connector,
                partition,
            } => partition_key(kind::BARRIER, connector, partition),
            Key::GroupReset {
                connector,
                partition,
            } => partition_key(kind::GROUP_RESET, connector, partition),
            Key::GroupCommit {
                connector,
                partition,
            } => partition_key(kind::GROUP_COMMIT, connector, partition),
            Key::Schema {
                connector,
                subject,
                version,
            } => {
                let mut key = connector_prefix(kind::SCHEMA, connector);
                push_text(&mut key, subject);
                key.extend_from_slice(&version.to_be_bytes());
                key
            }
        }
    }
}

/// The prefix of every key of `kind` belonging to `connector`.
fn connector_prefix(kind: u8, connector: &str) -> Vec<u8> {
    let mut key = vec![ENCODING, kind];
    push_text(&mut key, connector);
    key
}

/// The key of `kind` for one of `connector`'s partitions.
fn partition_key(kind: u8, connector: &str, partition: &SourcePartition) -> Vec<u8> {
    let mut key = connector_prefix(kind, connector);
    push_text(&mut key, &partition.topic);
    key.extend_from_slice(&partition.partition.to_be_bytes());
    key
}

fn damaged(key: &[u8], detail: impl std::fmt::Display) -> WalError {
    WalError::Metadata {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: detail.to_string(),
    }
}

/// The typed view of a WAL's metadata tree.
#[derive(Debug, Clone, Copy)]
pub(crate) struct State<'a> {
    wal: &'a Wal,
}

impl<'a> State<'a> {
    /// The state kept in `wal`.
    pub(crate) fn of(wal: &'a Wal) -> Self {
        Self { wal }
    }

    fn get(&self, key: Key<'_>) -> Result<Option<Vec<u8>>, WalError> {
        self.wal.meta_get(&key.encode())
    }

    fn put(&self, key: Key<'_>, value: &[u8]) -> Result<(), WalError> {
        self.wal.meta_put(&key.encode(), value)
    }

    fn remove(&self, key: Key<'_>) -> Result<(), WalError> {
        self.wal.meta_remove(&key.encode())
    }

    /// The connector's target as last set ([`Target::Running`] when never set).
    pub(crate) fn target(&self, connector: &str) -> Result<Target, WalError> {
        let key = Key::Target { connector };
        match self.get(key)?.as_deref() {
            None => Ok(Target::Running),
            Some(b"paused") => Ok(Target::Paused),
            Some(b"stopped") => Ok(Target::Stopped),
            Some(other) => Err(damaged(
                &key.encode(),
                format!("unknown target {:?}", String::from_utf8_lossy(other)),
            )),
        }
    }

    /// Sets the connector's target.
    pub(crate) fn set_target(&self, connector: &str, target: Target) -> Result<(), WalError> {
        let key = Key::Target { connector };
        match target {
            Target::Paused => self.put(key, b"paused"),
            Target::Stopped => self.put(key, b"stopped"),
            Target::Running => self.remove(key),
        }
    }

    /// Every connector config stored through the API, by name.
    pub(crate) fn configs(&self) -> Result<Vec<(String, Settings)>, WalError> {
        let prefix = [ENCODING, kind::CONFIG];
        let mut out = Vec::new();
        for (key, value) in self.wal.meta_scan(&prefix)? {
            let (name, rest) = take_text(&key[prefix.len()..])
                .ok_or_else(|| damaged(&key, "not a connector name"))?;
            if !rest.is_empty() {
                return Err(damaged(&key, "bytes after the connector name"));
            }
            let settings = serde_json::from_slice(&value).map_err(|e| damaged(&key, e))?;
            out.push((name, settings));
        }
        Ok(out)
    }

    /// Stores the settings of a connector created through the API.
    pub(crate) fn put_config(
        &self,
        connector: &str,
        settings: &BTreeMap<String, String>,
    ) -> Result<(), WalError> {
        let bytes = serde_json::to_vec(settings).expect("a string map serializes");
        self.put(Key::Config { connector }, &bytes)
    }

    /// The internal offset below which records predate an offset change of `partition`
    /// (0 when its offsets were never changed).
    pub(crate) fn barrier(
        &self,
        connector: &str,
        partition: &SourcePartition,
    ) -> Result<i64, WalError> {
        let key = Key::Barrier {
            connector,
            partition,
        };
        match self.get(key)? {
            None => Ok(0),
            Some(bytes) => {
                Ok(i64::from_be_bytes(bytes.try_into().map_err(|_| {
                    damaged(&key.encode(), "a barrier is 8 bytes")
                })?))
            }
        }
    }

    /// Sets the barrier of `partition`.
    pub(crate) fn set_barrier(
        &self,
        connector: &str,
        partition: &SourcePartition,
        internal_offset: i64,
    ) -> Result<(), WalError> {
        let key = Key::Barrier {
            connector,
            partition,
        };
        self.put(key, &internal_offset.to_be_bytes())
    }

    /// The group offset of `partition` followed at the last start, while the group
    /// still holds it (see `connector::group`).
    pub(crate) fn group_reset(
        &self,
        connector: &str,
        partition: &SourcePartition,
    ) -> Result<Option<i64>, WalError> {
        let key = Key::GroupReset {
            connector,
            partition,
        };
        match self.get(key)? {
            None => Ok(None),
            Some(bytes) => {
                Ok(Some(i64::from_be_bytes(bytes.try_into().map_err(
                    |_| damaged(&key.encode(), "a group offset is 8 bytes"),
                )?)))
            }
        }
    }

    /// Records (`Some`) or forgets (`None`) the group offset followed for `partition`.
    pub(crate) fn set_group_reset(
        &self,
        connector: &str,
        partition: &SourcePartition,
        offset: Option<i64>,
    ) -> Result<(), WalError> {
        let key = Key::GroupReset {
            connector,
            partition,
        };
        match offset {
            Some(offset) => self.put(key, &offset.to_be_bytes()),
            None => self.remove(key),
        }
    }

    /// What kafka-direct committed to its group for `partition` (none when it never
    /// did, or its group's offsets were deleted since).
    pub(crate) fn group_commits(
        &self,
        connector: &str,
        partition: &SourcePartition,
    ) -> Result<Option<GroupCommits>, WalError> {
        let key = Key::GroupCommit {
            connector,
            partition,
        };
        match self.get(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| damaged(&key.encode(), e)),
        }
    }

    /// Records what kafka-direct committed to its group for `partition` (`None`:
    /// forgets it).
    pub(crate) fn set_group_commits(
        &self,
        connector: &str,
        partition: &SourcePartition,
        commits: Option<&GroupCommits>,
    ) -> Result<(), WalError> {
        let key = Key::GroupCommit {
            connector,
            partition,
        };
        match commits {
            Some(c) => self.put(
                key,
                &serde_json::to_vec(c).expect("group commits serialize"),
            ),
            None => self.remove(key),
        }
    }

    /// The connector's dead-letter floors (empty when none were kept).
    pub(crate) fn dead_letters(&self, connector: &str) -> Result<DeadLetterFloors, WalError> {
        let key = Key::DeadLetters { connector };
        match self.get(key)? {
            None => Ok(DeadLetterFloors::default()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| damaged(&key.encode(), e)),
        }
    }

    /// Stores the connector's dead-letter floors.
    pub(crate) fn put_dead_letters(
        &self,
        connector: &str,
        floors: &DeadLetterFloors,
    ) -> Result<(), WalError> {
        let bytes = serde_json::to_vec(floors).expect("the floors serialize");
        self.put(Key::DeadLetters { connector }, &bytes)
    }

    /// Every schema version of the connector: (subject, version, schema), by subject then
    /// version.
    pub(crate) fn schemas(&self, connector: &str) -> Result<Vec<(String, u32, Schema)>, WalError> {
        let prefix = connector_prefix(kind::SCHEMA, connector);
        let mut out = Vec::new();
        for (key, value) in self.wal.meta_scan(&prefix)? {
            let (subject, rest) = take_text(&key[prefix.len()..])
                .ok_or_else(|| damaged(&key, "not a subject name"))?;
            let version = u32::from_be_bytes(
                rest.try_into()
                    .map_err(|_| damaged(&key, "the version is not 4 bytes"))?,
            );
            let schema = serde_json::from_slice(&value)
                .map_err(|e| damaged(&key, format!("schema does not decode: {e}")))?;
            out.push((subject, version, schema));
        }
        Ok(out)
    }

    /// Stores a schema version; returns the WAL's write mark, which
    /// [`Wal::commit_through`] makes durable. Nothing may name the version downstream
    /// before that returned.
    pub(crate) fn put_schema(
        &self,
        connector: &str,
        subject: &str,
        version: u32,
        schema: &Schema,
    ) -> Result<u64, WalError> {
        let key = Key::Schema {
            connector,
            subject,
            version,
        };
        let bytes = serde_json::to_vec(schema).expect("a schema serializes");
        self.put(key, &bytes)?;
        Ok(self.wal.write_mark())
    }

    /// Forgets what belongs to a deleted connector: its target, config, schemas and its
    /// record of group commits. Its barriers stay (a connector created again under the
    /// name starts after them), so do its dead-letter floors (the dead letters it wrote
    /// stay in the topic) and the group offsets recorded as taken (those its group still
    /// holds must not become a new connector's start).
    pub(crate) fn forget_connector(&self, connector: &str) -> Result<(), WalError> {
        self.remove(Key::Target { connector })?;
        self.remove(Key::Config { connector })?;
        for (key, _) in self
            .wal
            .meta_scan(&connector_prefix(kind::GROUP_COMMIT, connector))?
        {
            self.wal.meta_remove(&key)?;
        }
        for (key, _) in self
            .wal
            .meta_scan(&connector_prefix(kind::SCHEMA, connector))?
        {
            self.wal.meta_remove(&key)?;
        }
        Ok(())
    }

    /// Rewrites the metadata of earlier builds (text keys `target\0<name>`,
    /// `connector-config\0<name>`, `barrier\0<name>\0<topic>\0<partition>`,
    /// `dead-letters\0<name>`, `schema\0<name>\0<subject>\0<version>`) under this
    /// encoding, and returns how many keys it rewrote. Durable with the next commit;
    /// run before anything reads the state.
    pub(crate) fn upgrade(&self) -> Result<usize, WalError> {
        let mut moved = 0;
        for (key, value) in self.wal.meta_scan(&[])? {
            if key.first() == Some(&ENCODING) {
                continue;
            }
            let text =
                |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| damaged(&key, "not UTF-8"));
            let mut parts = key.splitn(2, |b| *b == 0);
            let kind = parts.next().unwrap_or_default();
            let rest = parts
                .next()
                .ok_or_else(|| damaged(&key, "an unknown metadata key"))?;
            let new = match kind {
                b"target" => Key::Target {
                    connector: &text(rest)?,
                }
                .encode(),
                b"connector-config" => Key::Config {
                    connector: &text(rest)?,
                }
                .encode(),
                b"dead-letters" => Key::DeadLetters {
                    connector: &text(rest)?,
                }
                .encode(),
                b"barrier" => {
                    let fields: Vec<&[u8]> = rest.splitn(3, |b| *b == 0).collect();
                    let [connector, topic, partition] = fields[..] else {
                        return Err(damaged(&key, "a barrier key has three fields"));
                    };
                    let partition = SourcePartition::new(
                        text(topic)?,
                        text(partition)?
                            .parse()
                            .map_err(|_| damaged(&key, "the partition is not a number"))?,
                    );
                    Key::Barrier {
                        connector: &text(connector)?,
                        partition: &partition,
                    }
                    .encode()
                }
                b"schema" => {
                    // The version is 4 raw bytes, which may hold a NUL: split from the end.
                    if rest.len() < 5 || rest[rest.len() - 5] != 0 {
                        return Err(damaged(&key, "a schema key ends in NUL and 4 bytes"));
                    }
                    let (names, version) = rest.split_at(rest.len() - 5);
                    let (connector, subject) = names
                        .iter()
                        .position(|b| *b == 0)
                        .map(|i| (&names[..i], &names[i + 1..]))
                        .ok_or_else(|| damaged(&key, "no subject in a schema key"))?;
                    Key::Schema {
                        connector: &text(connector)?,
                        subject: &text(subject)?,
                        version: u32::from_be_bytes(version[1..].try_into().expect("4 bytes")),
                    }
                    .encode()
                }
                _ => return Err(damaged(&key, "an unknown metadata key")),
            };
            self.wal.meta_put(&new, &value)?;
            self.wal.meta_remove(&key)?;
            moved += 1;
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal(dir: &std::path::Path) -> Wal {
        Wal::open_for_tests(dir)
    }

    #[test]
    fn components_are_terminated_so_no_connector_prefixes_another() {
        let short = connector_prefix(kind::TARGET, "orders");
        let long = Key::Target {
            connector: "orders-eu",
        }
        .encode();
        assert!(!long.starts_with(&short));
        let nul = Key::Config { connector: "a\0b" }.encode();
        assert_eq!(take_text(&nul[2..]).unwrap(), ("a\0b".to_owned(), &b""[..]));
        assert!(!nul.starts_with(&connector_prefix(kind::CONFIG, "a")));
    }

    #[test]
    fn forgetting_a_connector_keeps_the_state_of_one_it_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let wal = wal(dir.path());
        let state = State::of(&wal);
        let schema = Schema::infer_record(&serde_json::json!({"id": 1})).unwrap();
        for name in ["orders", "orders-eu"] {
            state.set_target(name, Target::Paused).unwrap();
            state.put_config(name, &BTreeMap::new()).unwrap();
            state.put_schema(name, "int.o", 1, &schema).unwrap();
        }
        state.forget_connector("orders").unwrap();
        assert_eq!(state.target("orders").unwrap(), Target::Running);
        assert_eq!(state.target("orders-eu").unwrap(), Target::Paused);
        assert_eq!(state.schemas("orders").unwrap(), vec![]);
        assert_eq!(state.schemas("orders-eu").unwrap().len(), 1);
        let names: Vec<String> = state.configs().unwrap().into_iter().map(|c| c.0).collect();
        assert_eq!(names, vec!["orders-eu"]);
    }

    #[test]
    fn the_text_keys_of_earlier_builds_are_rewritten_once() {
        let dir = tempfile::tempdir().unwrap();
        let wal = wal(dir.path());
        let schema = Schema::infer_record(&serde_json::json!({"id": 1})).unwrap();
        let schema_json = serde_json::to_vec(&schema).unwrap();
        let mut version_key = b"schema\0orders\0int.o\0".to_vec();
        version_key.extend_from_slice(&256u32.to_be_bytes()); // holds NUL bytes
        wal.meta_put(&version_key, &schema_json).unwrap();
        wal.meta_put(b"target\0orders-eu", b"stopped").unwrap();
        wal.meta_put(b"connector-config\0orders", br#"{"topic.prefix":"x"}"#)
            .unwrap();
        wal.meta_put(b"barrier\0orders\0a.b\x002", &7i64.to_be_bytes())
            .unwrap();
        wal.meta_put(b"dead-letters\0orders", br#"{"floors":{"0":3},"next":[]}"#)
            .unwrap();
        let state = State::of(&wal);
        assert_eq!(state.upgrade().unwrap(), 5);
        assert_eq!(state.upgrade().unwrap(), 0, "once");
        assert_eq!(state.target("orders-eu").unwrap(), Target::Stopped);
        assert_eq!(state.configs().unwrap()[0].1["topic.prefix"], "x");
        assert_eq!(
            state
                .barrier("orders", &SourcePartition::new("a.b", 2))
                .unwrap(),
            7
        );
        assert_eq!(state.dead_letters("orders").unwrap().floors[&0], 3);
        assert_eq!(
            state.schemas("orders").unwrap(),
            vec![("int.o".to_owned(), 256, schema)]
        );
    }
}
