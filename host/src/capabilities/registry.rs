//! `shoal:platform/registry`: the instance's identity, and its self-reported health.

use std::sync::Arc;
use wasmtime::component::{HasData, Linker};

use super::{PlatformView, ServiceContext, traced};
use crate::bindings::registry::{self, Health, Host, Identity};
use crate::recording::journal::{self, Journal};
use crate::registry::{Health as RegistryHealth, Registry};

/// What a registry call sees: the instance's service, host and registry backend.
pub struct RegistryView<'a> {
    /// The service the instance runs.
    pub service: &'a ServiceContext,
    /// This host's id.
    pub host_id: &'a str,
    /// Where health is recorded.
    pub registry: &'a Arc<dyn Registry>,
    /// The request being served (for the log line of a health report).
    pub request_id: &'a str,
    /// The request's journal, when it is recorded or replayed.
    pub journal: Option<&'a Journal>,
}

struct HasRegistry;

impl HasData for HasRegistry {
    type Data<'a> = RegistryView<'a>;
}

pub(super) fn add_to_linker<T: PlatformView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    registry::add_to_linker::<T, HasRegistry>(linker, |state| {
        let ctx = state.platform().ctx;
        RegistryView {
            service: &ctx.service,
            host_id: &ctx.platform.host_id,
            registry: &ctx.platform.registry,
            request_id: &ctx.request_id,
            journal: ctx.journal(),
        }
    })
}

/// The registry's health for a health the guest reported (or its check returned).
pub fn health_from_wit(health: Health) -> RegistryHealth {
    match health {
        Health::Serving => RegistryHealth::Serving,
        Health::Degraded => RegistryHealth::Degraded,
        Health::NotServing => RegistryHealth::NotServing,
    }
}

/// The WIT health of a registry health.
pub fn health_to_wit(health: RegistryHealth) -> Health {
    match health {
        RegistryHealth::Serving => Health::Serving,
        RegistryHealth::Degraded => Health::Degraded,
        RegistryHealth::NotServing => Health::NotServing,
    }
}

impl Host for RegistryView<'_> {
    async fn get_identity(&mut self) -> wasmtime::Result<Identity> {
        let about = journal::about(self.journal, String::new);
        let identity = Identity {
            service: self.service.name.to_string(),
            version: self.service.version.to_string(),
            instance_id: self.service.instance_id.clone(),
            host_id: self.host_id.to_owned(),
        };
        traced(
            "registry.get-identity",
            &self.service.name,
            journal::call(self.journal, "registry.get-identity", about, async {
                Ok(identity)
            }),
        )
        .await
    }

    async fn report_health(
        &mut self,
        status: Health,
        reason: Option<String>,
    ) -> wasmtime::Result<()> {
        let service = self.service;
        if self.journal.is_some_and(Journal::is_replaying) {
            // A replay's health is nobody's business.
            return Ok(());
        }
        traced("registry.report-health", &service.name, async {
            let health = health_from_wit(status);
            ::tracing::info!(
                service = %service.name,
                request_id = %self.request_id,
                ?health,
                reason = reason.as_deref().unwrap_or(""),
                "service reported its health"
            );
            let effective = {
                let mut signals = service.health.lock();
                signals.reported = Some(health);
                signals.effective()
            };
            // A registry backend that cannot be reached is neither the guest's fault
            // nor a reason to end its request: the next report or check retries.
            if let Err(error) = self
                .registry
                .set_health(&service.instance_id, effective)
                .await
            {
                ::tracing::warn!(service = %service.name, %error, "cannot record reported health");
            }
            Ok(())
        })
        .await
    }
}
