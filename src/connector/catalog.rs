//! The connectors a service runs: the one its config file declares, and those created
//! through the API, whose configs are kept in the WAL's state ([`crate::state`]) so that a restart brings
//! each back in its last state (running, paused or stopped).
//!
//! A connector declared in the file is managed by the file: the API can pause, stop,
//! restart it and change its offsets, but not change its config or delete it.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{error, info, warn};

use super::runtime::{ConnectorRuntime, Context, ControlError};
use crate::config::{connector_from_settings, ConfigError, ConnectorConfig};
use crate::connector::{ConnectorHandle, Target};
use crate::format::registry::SchemaRegistry;
use crate::metrics::PartitionMetrics;
use crate::record::SourcePartition;
use crate::state::State;
use crate::wal::WalError;

/// Every connector the service runs.
#[derive(Debug)]
pub struct Connectors {
    list: std::sync::RwLock<Vec<Arc<ConnectorRuntime>>>,
    ctx: Arc<Context>,
    /// The name of the connector the config file declares.
    declared: Option<String>,
    /// Serializes create, update and delete.
    changes: tokio::sync::Mutex<()>,
}

/// The connector `settings` describe, with its TLS material read (a bad file is refused
/// when the connector is created, not when it starts).
fn checked_settings(
    name: &str,
    settings: &BTreeMap<String, String>,
) -> Result<ConnectorConfig, ConfigError> {
    let config = connector_from_settings(name, settings)?;
    crate::service::external_transport(&config)?;
    Ok(config)
}

impl Connectors {
    /// The file's connector (if any) and every connector stored by the API, not
    /// started. `settle`: the previous run did not stop cleanly.
    pub fn open(
        ctx: Arc<Context>,
        declared: Option<ConnectorConfig>,
        settle: bool,
    ) -> Result<Self, WalError> {
        let wal = &ctx.wal;
        let mut configs: Vec<ConnectorConfig> = Vec::new();
        for (name, settings) in State::of(wal).configs()? {
            if declared.as_ref().is_some_and(|d| d.name == name) {
                warn!(connector = %name, "a connector of this name was created through the API and the config file declares one too: the file's config is used");
                continue;
            }
            match checked_settings(&name, &settings) {
                Ok(config) => configs.push(config),
                Err(e) => {
                    error!(connector = %name, error = %e, "a stored connector config is no longer valid (after an upgrade?); it is not started: change it with PUT /connectors/{name}/config")
                }
            }
        }
        let declared_name = declared.as_ref().map(|c| c.name.clone());
        configs.splice(0..0, declared);
        let catalog = Self {
            list: std::sync::RwLock::new(Vec::new()),
            ctx,
            declared: declared_name,
            changes: tokio::sync::Mutex::new(()),
        };
        for config in configs {
            let runtime = catalog.runtime(config, settle)?;
            catalog.push(runtime);
        }
        Ok(catalog)
    }

    fn runtime(
        &self,
        config: ConnectorConfig,
        settle: bool,
    ) -> Result<Arc<ConnectorRuntime>, WalError> {
        let wal = &self.ctx.wal;
        let registry = if config.schemas_enable {
            Some(Arc::new(SchemaRegistry::open(wal, &config.name)?))
        } else {
            None
        };
        let handle = Arc::new(ConnectorHandle::open(config, wal.clone(), registry)?);
        Ok(Arc::new(ConnectorRuntime::new(
            handle,
            Arc::clone(&self.ctx),
            settle,
        )))
    }

    fn push(&self, runtime: Arc<ConnectorRuntime>) {
        self.list
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(runtime);
    }

    /// Every connector, the file's first.
    pub fn all(&self) -> Vec<Arc<ConnectorRuntime>> {
        self.list.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The connector called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<ConnectorRuntime>> {
        self.all()
            .into_iter()
            .find(|c| c.handle.config().name == name)
    }

    /// Every connector's handle.
    pub fn handles(&self) -> Vec<Arc<ConnectorHandle>> {
        self.all().iter().map(|c| Arc::clone(&c.handle)).collect()
    }

    /// Every partition of every connector.
    pub fn partitions(&self) -> Vec<Arc<PartitionMetrics>> {
        self.all()
            .iter()
            .flat_map(|c| c.handle.partitions())
            .collect()
    }

    /// Whether `name` is the connector the config file declares.
    pub fn is_declared(&self, name: &str) -> bool {
        self.declared.as_deref() == Some(name)
    }

    /// The connector `name`, unless the config file declares it (then only the file can
    /// `action` it).
    fn managed_by_api(
        &self,
        name: &str,
        action: &str,
    ) -> Result<Arc<ConnectorRuntime>, ControlError> {
        let runtime = self
            .get(name)
            .ok_or_else(|| ControlError::NotFound(name.to_owned()))?;
        if self.is_declared(name) {
            return Err(ControlError::Conflict(format!(
                "connector {name} is declared in the service's config file: {action} it there and restart the service"
            )));
        }
        Ok(runtime)
    }

    /// Starts `runtime` in the background; a failure to start is shown in its status.
    pub fn start_in_background(runtime: Arc<ConnectorRuntime>) {
        tokio::spawn(async move {
            let name = runtime.handle.config().name.clone();
            if let Err(e) = runtime.start().await {
                error!(connector = %name, error = %e, "the connector could not start; fix the cause and POST /connectors/{name}/restart");
            }
        });
    }

    /// Refuses a config whose internal topics (or dead-letter topic) are another
    /// connector's: two writers on one internal partition would break exactly-once.
    fn check_conflicts(&self, config: &ConnectorConfig) -> Result<(), ControlError> {
        let mine: Vec<String> = config
            .topics
            .iter()
            .map(|t| config.internal_topic(t))
            .collect();
        for other in self.all() {
            let other = other.handle.config();
            if other.name == config.name {
                continue;
            }
            let theirs: Vec<String> = other
                .topics
                .iter()
                .map(|t| other.internal_topic(t))
                .collect();
            if let Some(topic) = mine.iter().find(|t| theirs.contains(t)) {
                return Err(ControlError::Conflict(format!(
                    "internal topic {topic} is already written by connector {}: choose another topic.prefix",
                    other.name
                )));
            }
            if theirs.contains(&config.dead_letter_topic) || mine.contains(&other.dead_letter_topic)
            {
                return Err(ControlError::Conflict(format!(
                    "connector {}'s internal topics and dead-letter topics would overlap with this one's",
                    other.name
                )));
            }
        }
        Ok(())
    }

    /// `POST /connectors`: creates, stores and starts a connector.
    pub async fn create(
        &self,
        name: &str,
        settings: &BTreeMap<String, String>,
    ) -> Result<Arc<ConnectorRuntime>, ControlError> {
        let _guard = self.changes.lock().await;
        if self.get(name).is_some() {
            return Err(ControlError::Conflict(format!(
                "connector {name} already exists"
            )));
        }
        let config =
            checked_settings(name, settings).map_err(|e| ControlError::Refused(e.to_string()))?;
        self.check_conflicts(&config)?;
        self.store(name, settings).await?;
        let runtime = self.runtime(config, false)?;
        self.push(Arc::clone(&runtime));
        info!(connector = %name, "connector created");
        Self::start_in_background(Arc::clone(&runtime));
        Ok(runtime)
    }

    /// `PUT /connectors/{name}/config`: creates the connector, or changes its config.
    /// When only its topic lists grow, the new topics start at the next metadata refresh
    /// and the running partitions go on; any other change restarts the connector.
    /// Returns whether it was created.
    pub async fn put(
        &self,
        name: &str,
        settings: &BTreeMap<String, String>,
    ) -> Result<bool, ControlError> {
        if self.get(name).is_none() {
            self.create(name, settings).await?;
            return Ok(true);
        }
        let _guard = self.changes.lock().await;
        let runtime = self.managed_by_api(name, "change")?;
        let config =
            checked_settings(name, settings).map_err(|e| ControlError::Refused(e.to_string()))?;
        self.check_conflicts(&config)?;
        let old = runtime.handle.config();
        if *old == config {
            return Ok(false);
        }
        if old.schemas_enable != config.schemas_enable {
            return Err(ControlError::Refused(format!(
                "schemas.enable cannot change on an existing connector ({name}): delete it and create it again"
            )));
        }
        self.store(name, settings).await?;
        let only_more_topics = {
            let mut same = config.clone();
            same.topics = old.topics.clone();
            same.settings = old.settings.clone();
            same == *old && old.topics.iter().all(|t| config.topics.contains(t))
        };
        if only_more_topics {
            info!(connector = %name, topics = %config.topics.join(","), "topics added: they start at the next metadata refresh");
            runtime.handle.set_config(config);
            runtime.refresh_now();
        } else {
            info!(connector = %name, "config changed: restarting the connector");
            runtime.stop().await?;
            runtime.handle.set_config(config);
            Self::start_in_background(runtime);
        }
        Ok(false)
    }

    /// `DELETE /connectors/{name}`: stops the connector and deletes its WAL entries,
    /// checkpoints, schemas and config. The internal topics' current ends become
    /// barriers, so a connector re-created under the same name starts fresh under
    /// `auto.offset.reset` instead of resuming after what the old one copied.
    pub async fn delete(&self, name: &str) -> Result<(), ControlError> {
        let _guard = self.changes.lock().await;
        let runtime = self.managed_by_api(name, "remove")?;
        runtime.set_target(Target::Stopped).await?;
        let wal = &self.ctx.wal;
        let mut partitions = runtime.logged_partitions();
        for p in runtime.handle.partitions() {
            if !partitions.contains(&p.partition) {
                partitions.push(p.partition.clone());
            }
        }
        let changes: Vec<(SourcePartition, Option<i64>)> =
            partitions.iter().map(|p| (p.clone(), None)).collect();
        if !changes.is_empty() {
            runtime.forget_offsets(&changes).await?;
        }
        for p in &partitions {
            wal.drop_partition(name, p)?;
        }
        State::of(wal).forget_connector(name)?;
        wal.commit().await?;
        self.list
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|c| c.handle.config().name != name);
        info!(connector = %name, "connector deleted");
        Ok(())
    }

    async fn store(&self, name: &str, settings: &BTreeMap<String, String>) -> Result<(), WalError> {
        State::of(&self.ctx.wal).put_config(name, settings)?;
        self.ctx.wal.commit().await
    }
}
