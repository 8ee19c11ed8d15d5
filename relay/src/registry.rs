//! The tenant registry: tenant id → running actor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use dashmap::DashMap;
use tokio_util::task::TaskTracker;

use crate::config::{Config, TenantId};
use crate::metrics::{CommitMetrics, Metrics};
use crate::tenant::{Attached, TenantActor, TenantError, TenantHandle};
use wharf_store::Backend;

/// Cloneable; all clones share one map.
#[derive(Clone, Debug)]
pub struct Registry(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    tenants: DashMap<TenantId, TenantHandle>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    /// The storage threads every tenant's SQLite work runs on.
    backend: Backend,
    actors: TaskTracker,
    next_actor_id: AtomicU64,
    /// Tenants an administrator is deleting or importing: no actor starts for them.
    held: DashMap<TenantId, ()>,
}

/// A tenant held for an administrative operation; released on drop.
#[derive(Debug)]
pub struct Hold {
    registry: Registry,
    tenant: TenantId,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.registry.0.held.remove(&self.tenant);
    }
}

impl Registry {
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        Self(Arc::new(Inner {
            tenants: DashMap::new(),
            metrics,
            backend: Backend::new(&config.store_config()),
            config,
            actors: TaskTracker::new(),
            next_actor_id: AtomicU64::new(1),
            held: DashMap::new(),
        }))
    }

    /// The running actor for `tenant`, started if there is none (and the tenant is not held).
    /// The actor is created inside the map's entry lock, so simultaneous first connections
    /// share one actor, and a [`Registry::hold`] taken before an eviction's look at the map
    /// either sees this actor or stops it from starting.
    pub fn get_or_spawn(&self, tenant: &TenantId) -> Result<TenantHandle, TenantError> {
        if let Some(h) = self.0.tenants.get(tenant) {
            return Ok(h.clone());
        }
        let entry = self.0.tenants.entry(tenant.clone());
        if matches!(entry, dashmap::Entry::Vacant(_)) && self.0.held.contains_key(tenant) {
            return Err(TenantError::Held);
        }
        Ok(entry
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
                    self.0.backend.clone(),
                    &self.0.actors,
                    vec![Box::new(CommitMetrics(self.0.metrics.clone()))],
                    self.0.metrics.clone(),
                    retire,
                )
            })
            .clone())
    }

    /// Holds `tenant` for an administrative operation: no actor starts for it until the
    /// returned guard drops. Fails if another operation holds it.
    pub fn hold(&self, tenant: &TenantId) -> Result<Hold, TenantError> {
        match self.0.held.entry(tenant.clone()) {
            dashmap::Entry::Occupied(_) => Err(TenantError::Held),
            dashmap::Entry::Vacant(v) => {
                v.insert(());
                Ok(Hold {
                    registry: self.clone(),
                    tenant: tenant.clone(),
                })
            }
        }
    }

    /// Closes the sessions of a held tenant, stops its actor (after it committed what it was
    /// given) and waits until its database is closed. Nothing if it was not running.
    pub async fn evict(&self, hold: &Hold) {
        let running = self.0.tenants.get(&hold.tenant).map(|h| h.clone());
        if let Some(handle) = running {
            handle.evict().await;
            self.remove(&hold.tenant, handle.actor_id);
        }
    }

    /// Whether `tenant` has a running actor (its database is open).
    pub fn is_active(&self, tenant: &TenantId) -> bool {
        self.0.tenants.contains_key(tenant)
    }

    /// Joins a tenant, riding over the moment an idle actor retires.
    pub async fn attach(&self, tenant: &TenantId) -> Result<(TenantHandle, Attached), TenantError> {
        let mut last = TenantError::Closed;
        for _ in 0..8 {
            let handle = self.get_or_spawn(tenant)?;
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

    /// The storage every actor of this relay opens its tenant on.
    pub fn backend(&self) -> &Backend {
        &self.0.backend
    }

    /// Another relay committed to `public_key` of `tenant` up to `next`: the tenant's actor
    /// here, if it runs, reads what it has not seen. Never waits (a doorbell dropped because
    /// the actor's queue is full is made up by its poll).
    pub fn doorbell(&self, tenant: &str, public_key: String, next: u64) {
        let Some(tenant) = TenantId::parse(tenant) else {
            return;
        };
        if let Some(h) = self.0.tenants.get(&tenant) {
            h.follow(Some(public_key), next);
        }
    }

    /// `tenant`'s stored settings changed (through any relay): its actor here, if it runs,
    /// reads them again.
    pub fn settings_changed(&self, tenant: &str) {
        let Some(tenant) = TenantId::parse(tenant) else {
            return;
        };
        if let Some(h) = self.0.tenants.get(&tenant) {
            h.reload_settings();
        }
    }

    /// An administrator deleted or replaced `tenant`'s data through some relay: if its actor
    /// runs here, its sessions close and it stops (clients reconnect to what is stored now).
    /// Nothing if an administrative operation here holds the tenant: that one is doing it.
    pub fn changed_elsewhere(&self, tenant: &str) {
        let Some(tenant) = TenantId::parse(tenant) else {
            return;
        };
        if !self.0.tenants.contains_key(&tenant) {
            return;
        }
        let Ok(hold) = self.hold(&tenant) else {
            return;
        };
        let registry = self.clone();
        tokio::spawn(async move {
            registry.evict(&hold).await;
            tracing::info!(
                tenant = hold.tenant.as_str(),
                "tenant changed by an administrator on another relay; its sessions here closed"
            );
        });
    }

    /// Commits or settings changes may have been missed: every running actor reads what it
    /// has not seen and reloads its settings.
    pub fn resync(&self) {
        for h in self.0.tenants.iter() {
            h.value().follow(None, 0);
            h.value().reload_settings();
        }
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
