//! A service's data as an operator handles it: a consistent snapshot of its store
//! (`shoal data export`), loading one into an empty store (`shoal data import`, on
//! either backend), and deleting it (`shoal rm --purge`).

use std::sync::Arc;

use super::{Conflict, ServiceError, Services};
use crate::registry::validate_name;
use crate::store::{ServiceStore, Snapshot, StoreError};

/// Why a data operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A refusal of the service layer (bad name, still running, not empty).
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The store refused or failed.
    #[error("{0}")]
    Store(StoreError),
}

impl Services {
    /// Everything `name`'s store holds, in one consistent snapshot.
    pub async fn export_data(&self, name: &str) -> Result<Snapshot, DataError> {
        let store = self.blocking_store_of(name).await?;
        tokio::task::spawn_blocking(move || store.export())
            .await
            .map_err(|error| DataError::Store(StoreError::Backend(error.to_string())))?
            .map_err(DataError::Store)
    }

    /// Load `snapshot` into `name`'s store, which must be empty.
    pub async fn import_data(&self, name: &str, snapshot: Snapshot) -> Result<(), DataError> {
        let store = self.blocking_store_of(name).await?;
        let imported = tokio::task::spawn_blocking(move || store.import(&snapshot))
            .await
            .map_err(|error| DataError::Store(StoreError::Backend(error.to_string())))?;
        match imported {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict) => Err(conflict(name, Conflict::StoreNotEmpty)),
            Err(error) => Err(DataError::Store(error)),
        }
    }

    /// Delete everything `name`'s store holds; refused while a version of it runs.
    pub async fn purge_data(&self, name: &str) -> Result<(), DataError> {
        validate_name(name).map_err(ServiceError::from)?;
        let _guard = self.changes.lock().await;
        if self.table.get(name).is_some() || self.failed_service(name).is_some() {
            return Err(conflict(name, Conflict::StillRuns));
        }
        let stores = self.platform.stores.clone();
        let owned = name.to_owned();
        tokio::task::spawn_blocking(move || stores.purge(&owned))
            .await
            .map_err(|error| DataError::Store(StoreError::Backend(error.to_string())))?
            .map_err(DataError::Store)
    }

    /// The store of `name`, running or not, opened off the runtime's threads (opening
    /// a store is I/O).
    async fn blocking_store_of(&self, name: &str) -> Result<Arc<dyn ServiceStore>, DataError> {
        if let Some(versions) = self.table.versions(name) {
            return Ok(versions.stable.context.store.clone());
        }
        validate_name(name).map_err(ServiceError::from)?;
        // Not running: opened with the default quota (a deploy brings its own).
        let quota = u64::from(crate::manifest::defaults::STORE_MB) * 1024 * 1024;
        let stores = self.platform.stores.clone();
        let owned = name.to_owned();
        tokio::task::spawn_blocking(move || stores.open(&owned, quota))
            .await
            .map_err(|error| DataError::Store(StoreError::Backend(error.to_string())))?
            .map_err(DataError::Store)
    }
}

fn conflict(name: &str, reason: Conflict) -> DataError {
    DataError::Service(ServiceError::Conflict {
        service: name.to_owned(),
        reason,
    })
}
