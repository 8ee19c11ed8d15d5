//! The tenant registry: tenant id → running actor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use dashmap::DashMap;
use tokio_util::task::TaskTracker;

use crate::config::{Config, TenantId};
use crate::store::StorePool;
use crate::tenant::{Attached, TenantActor, TenantError, TenantHandle};

/// Cloneable; all clones share one map.
#[derive(Clone, Debug)]
pub struct Registry(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    tenants: DashMap<TenantId, TenantHandle>,
    config: Arc<Config>,
    /// The storage threads every tenant's SQLite work runs on.
    pool: StorePool,
    actors: TaskTracker,
    next_actor_id: AtomicU64,
}

impl Registry {
    pub fn new(config: Arc<Config>) -> Self {
        Self(Arc::new(Inner {
            tenants: DashMap::new(),
            pool: StorePool::new(config.storage_threads),
            config,
            actors: TaskTracker::new(),
            next_actor_id: AtomicU64::new(1),
        }))
    }

    /// The running actor for `tenant`, started if there is none. The actor is created inside
    /// the map's entry lock, so simultaneous first connections share one actor.
    pub fn get_or_spawn(&self, tenant: &TenantId) -> TenantHandle {
        if let Some(h) = self.0.tenants.get(tenant) {
            return h.clone();
        }
        self.0
            .tenants
            .entry(tenant.clone())
            .or_insert_with(|| {
                let id = self.0.next_actor_id.fetch_add(1, Ordering::Relaxed);
                let registry: Weak<Inner> = Arc::downgrade(&self.0);
                let key = tenant.clone();
                let retire = Box::new(move || {
                    if let Some(inner) = registry.upgrade() {
                        Registry(inner).remove(&key, id);
                    }
                });
                TenantActor::spawn(
                    tenant.clone(),
                    id,
                    self.0.config.clone(),
                    self.0.pool.clone(),
                    &self.0.actors,
                    retire,
                )
            })
            .clone()
    }

    /// Joins a tenant, riding over the moment an idle actor retires.
    pub async fn attach(&self, tenant: &TenantId) -> Result<(TenantHandle, Attached), TenantError> {
        let mut last = TenantError::Closed;
        for _ in 0..8 {
            let handle = self.get_or_spawn(tenant);
            match handle.attach().await {
                Ok(attached) => return Ok((handle, attached)),
                Err(e) => {
                    // A retiring actor already left the map; make sure a failed one has too.
                    self.remove(tenant, handle.actor_id);
                    if matches!(e, TenantError::Storage(_)) {
                        return Err(e);
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Removes `tenant` only if it still maps to `actor_id`: a retiring actor can never evict
    /// its successor.
    pub(crate) fn remove(&self, tenant: &TenantId, actor_id: u64) {
        self.0
            .tenants
            .remove_if(tenant, |_, h| h.actor_id == actor_id);
    }

    /// Number of tenants with a running actor.
    pub fn active_tenants(&self) -> usize {
        self.0.tenants.len()
    }

    /// Stops every actor after it has committed what it was given, and waits for them.
    pub async fn shutdown(&self) {
        let handles: Vec<TenantHandle> = self.0.tenants.iter().map(|e| e.value().clone()).collect();
        for h in handles {
            h.stop().await;
        }
        self.0.actors.close();
        self.0.actors.wait().await;
    }
}
