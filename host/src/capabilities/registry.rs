//! `shoal:platform/registry`: the instance's identity, and its self-reported health.

use crate::bindings::registry::{Health, Host, Identity};
use crate::registry::Health as RegistryHealth;
use crate::runtime::GuestState;

impl Host for GuestState {
    async fn get_identity(&mut self) -> Identity {
        Identity {
            service: self.service.name.to_string(),
            version: self.service.version.to_string(),
            instance_id: self.service.instance_id.clone(),
            host_id: self.platform.host_id.clone(),
        }
    }

    async fn report_health(&mut self, status: Health, reason: Option<String>) {
        let health = match status {
            Health::Serving => RegistryHealth::Serving,
            Health::Degraded => RegistryHealth::Degraded,
            Health::NotServing => RegistryHealth::NotServing,
        };
        tracing::info!(
            service = %self.service.name,
            request_id = %self.request_id,
            ?health,
            reason = reason.as_deref().unwrap_or(""),
            "service reported its health"
        );
        let effective = {
            let mut signals = self.service.health.lock();
            signals.reported = Some(health);
            signals.effective()
        };
        if let Err(error) = self
            .platform
            .registry
            .set_health(&self.service.instance_id, effective)
            .await
        {
            tracing::warn!(service = %self.service.name, %error, "cannot record reported health");
        }
    }
}
