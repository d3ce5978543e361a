//! The embedded schema registry: versioned schemas per subject (the internal topic's
//! name), stored in the WAL's sled database so that they survive restarts.
//!
//! Versions are numbered 1..n per subject and never change once stored. A new version is
//! durable before any record naming it is produced: every forwarder commits the WAL
//! through [`SchemaRegistry::durable_mark`] before it produces (a group commit, at once
//! when nothing new is pending), so a version number seen downstream always exists here
//! after a crash, whichever partition made it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::schema::{Fit, Mismatch, Schema};
use crate::state::State;
use crate::wal::{Wal, WalError};

/// One stored version of a subject's schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    /// The subject (internal topic name).
    pub subject: String,
    /// 1..n.
    pub version: u32,
    /// The schema.
    pub schema: Schema,
    /// Its Kafka Connect JSON form with `"version"`, as written in envelopes.
    pub connect: String,
}

impl Version {
    fn new(subject: &str, version: u32, schema: Schema) -> Self {
        let mut connect = schema.to_connect();
        connect
            .as_object_mut()
            .expect("a schema is an object")
            .insert("version".into(), version.into());
        Self {
            subject: subject.to_owned(),
            version,
            schema,
            connect: connect.to_string(),
        }
    }
}

/// What [`SchemaRegistry::admit`] decided for a value.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The version the value fits.
    pub version: Arc<Version>,
    /// The version was created for this value.
    pub created: bool,
}

/// The schemas of one connector.
#[derive(Debug)]
pub struct SchemaRegistry {
    wal: Wal,
    connector: String,
    subjects: Mutex<BTreeMap<String, Vec<Arc<Version>>>>,
    /// The WAL write mark of the newest version created by this run (0: none).
    mark: std::sync::atomic::AtomicU64,
}

impl SchemaRegistry {
    /// Loads the connector's stored schemas.
    pub fn open(wal: &Wal, connector: &str) -> Result<Self, WalError> {
        let mut subjects: BTreeMap<String, Vec<Arc<Version>>> = BTreeMap::new();
        for (subject, version, schema) in State::of(wal).schemas(connector)? {
            subjects
                .entry(subject.clone())
                .or_default()
                .push(Arc::new(Version::new(&subject, version, schema)));
        }
        Ok(Self {
            wal: wal.clone(),
            connector: connector.to_owned(),
            subjects: Mutex::new(subjects),
            mark: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The version `value` fits under `subject`: the latest one, or a new one when the
    /// value needs the schema to evolve (or is the subject's first); a mismatch when no
    /// compatible evolution exists.
    pub fn admit(
        &self,
        subject: &str,
        value: &Value,
    ) -> Result<Result<Admitted, Mismatch>, WalError> {
        let latest = self.latest(subject);
        if let Some(latest) = &latest {
            match latest.schema.check(value) {
                Ok(Fit::Fits) => {
                    return Ok(Ok(Admitted {
                        version: Arc::clone(latest),
                        created: false,
                    }))
                }
                Ok(Fit::NeedsEvolution) => {}
                Err(m) => return Ok(Err(m)),
            }
        }
        // A new version: decided under the lock, against whatever is latest by then
        // (another partition of the topic may have evolved the schema meanwhile).
        let mut subjects = self.subjects.lock().expect("registry lock");
        let versions = subjects.entry(subject.to_owned()).or_default();
        let next = match versions.last() {
            None => match Schema::infer_record(value) {
                Ok(s) => s,
                Err(m) => return Ok(Err(m)),
            },
            Some(latest) => match latest.schema.check(value) {
                Ok(Fit::Fits) => {
                    return Ok(Ok(Admitted {
                        version: Arc::clone(latest),
                        created: false,
                    }))
                }
                Ok(Fit::NeedsEvolution) => match latest.schema.evolve(value) {
                    Ok(s) => s,
                    Err(m) => return Ok(Err(m)),
                },
                Err(m) => return Ok(Err(m)),
            },
        };
        // Inference takes an array's first element as the pattern: the others must fit.
        if let Err(m) = next.check(value) {
            return Ok(Err(m));
        }
        let number = versions.len() as u32 + 1;
        // Seen by other forwarders once pushed below; each waits for this mark to be
        // durable before producing a record (`SchemaRegistry::durable_mark`).
        let mark = State::of(&self.wal).put_schema(&self.connector, subject, number, &next)?;
        self.mark
            .fetch_max(mark, std::sync::atomic::Ordering::SeqCst);
        let version = Arc::new(Version::new(subject, number, next));
        tracing::info!(connector = %self.connector, subject, version = number, schema = %version.connect, "new schema version");
        versions.push(Arc::clone(&version));
        Ok(Ok(Admitted {
            version,
            created: true,
        }))
    }

    /// The WAL write mark that covers every version created so far: a forwarder makes it
    /// durable ([`Wal::commit_through`]) before it produces a record, so no version is
    /// named downstream before it survives a crash. At once but for the first produce
    /// after a new version.
    pub fn durable_mark(&self) -> u64 {
        self.mark.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The latest version of `subject`.
    pub fn latest(&self, subject: &str) -> Option<Arc<Version>> {
        self.subjects
            .lock()
            .expect("registry lock")
            .get(subject)
            .and_then(|v| v.last().cloned())
    }

    /// Every subject with its versions, oldest first.
    pub fn all(&self) -> BTreeMap<String, Vec<Arc<Version>>> {
        self.subjects.lock().expect("registry lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Opens the WAL in `dir`, again after a drop (sled lets go of its lock a moment later).
    fn open(dir: &std::path::Path) -> Wal {
        Wal::open_for_tests(dir)
    }

    #[test]
    fn versions_are_numbered_per_subject_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = open(dir.path());
            let reg = SchemaRegistry::open(&wal, "c").unwrap();
            let first = reg.admit("int.a", &json!({"id": 1})).unwrap().unwrap();
            assert_eq!((first.version.version, first.created), (1, true));
            let same = reg.admit("int.a", &json!({"id": 2})).unwrap().unwrap();
            assert_eq!((same.version.version, same.created), (1, false));
            let grown = reg
                .admit("int.a", &json!({"id": 3, "x": "y"}))
                .unwrap()
                .unwrap();
            assert_eq!((grown.version.version, grown.created), (2, true));
            assert!(reg
                .admit("int.a", &json!({"id": "three"}))
                .unwrap()
                .is_err());
            let mixed = reg.admit("int.c", &json!({"l": [1, "two"]})).unwrap();
            assert_eq!(
                mixed.unwrap_err().to_string(),
                "expected int64 at $.l[1], got string"
            );
            assert!(
                reg.latest("int.c").is_none(),
                "nothing stored for a refused first record"
            );
            let other = reg.admit("int.b", &json!({"z": true})).unwrap().unwrap();
            assert_eq!(other.version.version, 1);
            assert!(grown.version.connect.contains("\"version\":2"));
            wal.sync_blocking().unwrap();
        }
        let wal = open(dir.path());
        let reg = SchemaRegistry::open(&wal, "c").unwrap();
        let all = reg.all();
        assert_eq!(all["int.a"].len(), 2);
        assert_eq!(all["int.b"].len(), 1);
        let again = reg.admit("int.a", &json!({"id": 4})).unwrap().unwrap();
        assert_eq!((again.version.version, again.created), (2, false));
        assert!(SchemaRegistry::open(&wal, "other")
            .unwrap()
            .all()
            .is_empty());
    }

    /// What a kill -9 leaves on disk is what the process wrote to its files: a copy of
    /// the data dir taken while the WAL is open. A forwarder commits through the
    /// registry's mark before it produces a record that may name a new version.
    #[tokio::test]
    async fn a_new_version_is_on_disk_once_its_mark_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open(dir.path());
        let reg = SchemaRegistry::open(&wal, "c").unwrap();
        assert_eq!(reg.durable_mark(), 0, "no version made yet");
        reg.admit("int.a", &json!({"id": 1})).unwrap().unwrap();
        wal.commit_through(reg.durable_mark()).await.unwrap();
        let before = reg.durable_mark();
        reg.admit("int.a", &json!({"id": 2, "x": "y"}))
            .unwrap()
            .unwrap();
        assert!(
            reg.durable_mark() > before,
            "the new version moved the mark"
        );
        wal.commit_through(reg.durable_mark()).await.unwrap();
        let copy = tempfile::tempdir().unwrap();
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(dir.path().join("."))
            .arg(copy.path())
            .status()
            .unwrap();
        assert!(copied.success());
        let crashed = open(copy.path());
        let versions = SchemaRegistry::open(&crashed, "c").unwrap().all();
        assert_eq!(versions.get("int.a").map(Vec::len), Some(2));
    }
}
