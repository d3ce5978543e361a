//! The signals the tasks watch: the service's one stop signal (the token every task of
//! every connector watches, and why it fired), and a connector's pause [`Gate`].
//!
//! A [`Stop`] is cancelled once, with a reason, in one call: [`Stop::storage_failed`]
//! when the WAL's storage refuses a write (sled accepts no further writes after one, so
//! every task stops and the service exits naming the first failure). A shutdown request
//! stops the connectors one by one instead (each after its produce in flight), so it is
//! not a [`Stop`].

use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::{PartitionMetrics, TaskState};
use crate::state::Target;
use crate::wal::WalError;

/// Why the service stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A write to the WAL's storage failed: the first failure.
    StorageFailed(String),
}

/// The service-wide stop signal (cheap to clone; clones share it).
#[derive(Debug, Clone, Default)]
pub struct Stop {
    token: CancellationToken,
    reason: Arc<Mutex<Option<Reason>>>,
}

impl Stop {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops every task if `error` is a failure of the WAL's storage (sled refuses every
    /// write after one; a restart resumes from the last commit). Whether it was.
    pub fn if_storage_failed(&self, error: Option<&WalError>) -> bool {
        match error.filter(|e| e.is_storage_failure()) {
            Some(e) => {
                self.storage_failed(e);
                true
            }
            None => false,
        }
    }

    /// Records `detail` as the reason (unless an earlier failure was recorded) and
    /// stops every task.
    pub fn storage_failed(&self, detail: impl std::fmt::Display) {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| Reason::StorageFailed(detail.to_string()));
        self.token.cancel();
    }

    /// Why it fired; `None` while it has not.
    pub fn reason(&self) -> Option<Reason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Resolves once it fired.
    pub async fn stopped(&self) {
        self.token.cancelled().await
    }

    /// A token cancelled when this fires, or on its own (one connector's run).
    pub fn child_token(&self) -> CancellationToken {
        self.token.child_token()
    }
}

/// Where a fetcher or forwarder waits while its connector is paused.
#[derive(Debug, Clone)]
pub struct Gate {
    target: watch::Receiver<Target>,
}

impl Gate {
    /// The gate of a connector whose target `target` follows.
    pub(crate) fn new(target: watch::Receiver<Target>) -> Self {
        Self { target }
    }

    /// Whether the connector is running (not paused).
    pub fn is_open(&self) -> bool {
        *self.target.borrow() == Target::Running
    }

    /// Returns at once while running; while paused, marks the task paused and waits for
    /// a resume. `false` when `cancel` fired first.
    pub async fn pass(&mut self, cancel: &CancellationToken, metrics: &PartitionMetrics) -> bool {
        if *self.target.borrow_and_update() == Target::Running {
            return true;
        }
        metrics.set_state(TaskState::Paused);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return false,
                changed = self.target.changed() => {
                    if changed.is_err() {
                        // The handle is gone: the service is shutting down.
                        cancel.cancelled().await;
                        return false;
                    }
                    if *self.target.borrow_and_update() == Target::Running {
                        metrics.set_state(TaskState::Running);
                        return true;
                    }
                }
            }
        }
    }
}
