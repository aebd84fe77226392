//! The in-process registry backend (the default): a map guarded by a short mutex,
//! lease expiry by a background sweeper, and a `watch` channel per service.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;

use super::{Health, Instance, InstanceWatch, Registry, RegistryError};

struct Lease {
    instance: Instance,
    ttl: Duration,
    expires_at: Instant,
}

#[derive(Default)]
struct State {
    /// service → id → lease
    services: HashMap<String, BTreeMap<String, Lease>>,
    /// id → service
    index: HashMap<String, String>,
    watchers: HashMap<String, watch::Sender<Arc<Vec<Instance>>>>,
    /// Sweep unwatched channels when the map reaches this size.
    sweep_watchers_at: usize,
}

/// In-process registry.
pub struct EmbeddedRegistry {
    state: Mutex<State>,
}

impl EmbeddedRegistry {
    /// A registry whose expired leases are swept every `sweep_every` (on the current
    /// tokio runtime) for as long as the registry lives.
    pub fn start(sweep_every: Duration) -> Arc<Self> {
        let registry = Arc::new(Self {
            state: Mutex::new(State::default()),
        });
        let weak: Weak<Self> = Arc::downgrade(&registry);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(sweep_every);
            loop {
                tick.tick().await;
                let Some(registry) = weak.upgrade() else {
                    break;
                };
                registry.expire(Instant::now());
            }
        });
        registry
    }

    /// Drop every lease that expired before `now`; returns how many.
    pub fn expire(&self, now: Instant) -> usize {
        let mut state = self.state.lock();
        let mut expired = Vec::new();
        for (service, leases) in &mut state.services {
            leases.retain(|id, lease| {
                let live = lease.expires_at > now;
                if !live {
                    expired.push((service.clone(), id.clone()));
                }
                live
            });
        }
        for (service, id) in &expired {
            state.index.remove(id);
            tracing::info!(service = %service, instance = %id, "registration expired");
            publish(&mut state, service);
        }
        expired.len()
    }
}

/// The smallest map size at which unwatched channels are swept.
const MIN_WATCH_SWEEP: usize = 64;

fn snapshot(state: &State, service: &str) -> Arc<Vec<Instance>> {
    Arc::new(
        state
            .services
            .get(service)
            .map(|leases| leases.values().map(|l| l.instance.clone()).collect())
            .unwrap_or_default(),
    )
}

fn publish(state: &mut State, service: &str) {
    // Nobody watches any more: drop the channel instead of keeping it forever.
    if state
        .watchers
        .get(service)
        .is_some_and(|sender| sender.receiver_count() == 0)
    {
        state.watchers.remove(service);
    }
    let current = snapshot(state, service);
    if let Some(sender) = state.watchers.get(service) {
        sender.send_if_modified(|old| {
            if **old == *current {
                false
            } else {
                *old = current.clone();
                true
            }
        });
    }
}

#[async_trait::async_trait]
impl Registry for EmbeddedRegistry {
    async fn register(&self, instance: Instance, ttl: Duration) -> Result<(), RegistryError> {
        let mut state = self.state.lock();
        let service = instance.service.clone();
        // Re-registering an id under another service moves it.
        if let Some(previous) = state.index.insert(instance.id.clone(), service.clone())
            && previous != service
        {
            if let Some(leases) = state.services.get_mut(&previous) {
                leases.remove(&instance.id);
            }
            publish(&mut state, &previous);
        }
        state.services.entry(service.clone()).or_default().insert(
            instance.id.clone(),
            Lease {
                instance,
                ttl,
                expires_at: Instant::now() + ttl,
            },
        );
        publish(&mut state, &service);
        Ok(())
    }

    async fn renew(&self, id: &str) -> Result<(), RegistryError> {
        let mut state = self.state.lock();
        let service = state
            .index
            .get(id)
            .cloned()
            .ok_or_else(|| RegistryError::UnknownInstance(id.to_owned()))?;
        let lease = state
            .services
            .get_mut(&service)
            .and_then(|leases| leases.get_mut(id))
            .ok_or_else(|| RegistryError::UnknownInstance(id.to_owned()))?;
        lease.expires_at = Instant::now() + lease.ttl;
        Ok(())
    }

    async fn deregister(&self, id: &str) -> Result<(), RegistryError> {
        let mut state = self.state.lock();
        let service = state
            .index
            .remove(id)
            .ok_or_else(|| RegistryError::UnknownInstance(id.to_owned()))?;
        if let Some(leases) = state.services.get_mut(&service) {
            leases.remove(id);
        }
        publish(&mut state, &service);
        Ok(())
    }

    async fn set_health(&self, id: &str, health: Health) -> Result<(), RegistryError> {
        let mut state = self.state.lock();
        let service = state
            .index
            .get(id)
            .cloned()
            .ok_or_else(|| RegistryError::UnknownInstance(id.to_owned()))?;
        if let Some(lease) = state
            .services
            .get_mut(&service)
            .and_then(|leases| leases.get_mut(id))
            && lease.instance.health != health
        {
            tracing::info!(service = %service, instance = %id, ?health, "health changed");
            lease.instance.health = health;
            publish(&mut state, &service);
        }
        Ok(())
    }

    async fn instances(&self, service: &str) -> Result<Vec<Instance>, RegistryError> {
        Ok(snapshot(&self.state.lock(), service).as_ref().clone())
    }

    async fn watch(&self, service: &str) -> Result<InstanceWatch, RegistryError> {
        let mut state = self.state.lock();
        // Bound the map: forget channels nobody listens to, once it has doubled since
        // the last sweep (amortised O(1) per watch, not a scan every time).
        if state.watchers.len() >= state.sweep_watchers_at {
            state
                .watchers
                .retain(|_, sender| sender.receiver_count() > 0);
            state.sweep_watchers_at = (state.watchers.len() * 2).max(MIN_WATCH_SWEEP);
        }
        if let Some(sender) = state.watchers.get(service) {
            return Ok(sender.subscribe());
        }
        let (sender, receiver) = watch::channel(snapshot(&state, service));
        state.watchers.insert(service.to_owned(), sender);
        Ok(receiver)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Endpoint;
    use super::*;

    fn instance(id: &str, service: &str) -> Instance {
        Instance {
            id: id.into(),
            service: service.into(),
            endpoint: Endpoint::Http(format!("{id}:80")),
            version: "1".into(),
            tags: vec![],
            health: Health::Serving,
        }
    }

    #[tokio::test]
    async fn register_discover_deregister() {
        let registry = EmbeddedRegistry::start(Duration::from_secs(60));
        registry
            .register(instance("b1", "b"), Duration::from_secs(30))
            .await
            .expect("register");
        registry
            .register(instance("b2", "b"), Duration::from_secs(30))
            .await
            .expect("register");
        registry
            .register(instance("c1", "c"), Duration::from_secs(30))
            .await
            .expect("register");
        let ids: Vec<String> = registry
            .instances("b")
            .await
            .expect("list")
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, ["b1", "b2"]);
        registry.deregister("b1").await.expect("deregister");
        assert_eq!(registry.instances("b").await.expect("list").len(), 1);
        assert!(registry.deregister("b1").await.is_err());
        assert!(
            registry
                .instances("unknown")
                .await
                .expect("list")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn leases_expire_unless_renewed() {
        let registry = EmbeddedRegistry::start(Duration::from_secs(60));
        registry
            .register(instance("a", "s"), Duration::from_millis(50))
            .await
            .expect("register");
        registry
            .register(instance("b", "s"), Duration::from_millis(50))
            .await
            .expect("register");
        tokio::time::sleep(Duration::from_millis(30)).await;
        registry.renew("a").await.expect("renew");
        let later = Instant::now() + Duration::from_millis(25);
        assert_eq!(registry.expire(later), 1, "b expired, a was renewed");
        let ids: Vec<String> = registry
            .instances("s")
            .await
            .expect("list")
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, ["a"]);
        assert!(
            registry.renew("b").await.is_err(),
            "an expired lease cannot be renewed"
        );
    }

    #[tokio::test]
    async fn watchers_see_every_change() {
        let registry = EmbeddedRegistry::start(Duration::from_secs(60));
        let mut watch = registry.watch("s").await.expect("watch");
        assert!(watch.borrow_and_update().is_empty());
        registry
            .register(instance("a", "s"), Duration::from_secs(30))
            .await
            .expect("register");
        watch.changed().await.expect("changed");
        assert_eq!(watch.borrow_and_update().len(), 1);
        registry
            .set_health("a", Health::NotServing)
            .await
            .expect("health");
        watch.changed().await.expect("changed");
        assert_eq!(watch.borrow_and_update()[0].health, Health::NotServing);
        // Setting the same health again is not a change.
        registry
            .set_health("a", Health::NotServing)
            .await
            .expect("health");
        assert!(!watch.has_changed().expect("open"));
        registry.deregister("a").await.expect("deregister");
        watch.changed().await.expect("changed");
        assert!(watch.borrow_and_update().is_empty());
    }
}
