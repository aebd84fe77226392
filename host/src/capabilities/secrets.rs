//! `shoal:platform/secrets`: the operator's secrets that a service's manifest names,
//! read at each call so a rotation takes effect at once. A refusal is a typed error
//! (the guest's or its manifest's doing); the value itself never enters a span or a
//! log line.

use wasmtime::component::{HasData, Linker};

use super::{PlatformView, traced_fallible};
use crate::bindings::secrets::{self, Host, SecretError};
use crate::recording::journal::Journal;
use crate::secrets::{Refusal, Secrets};

/// What a recording keeps of a secret the guest read.
const SECRET_PLACEHOLDER: &str = "[secret]";

/// What a secrets call sees.
pub struct SecretsView<'a> {
    /// The host's secrets.
    pub secrets: &'a Secrets,
    /// The service.
    pub service: &'a str,
    /// The secrets its manifest names.
    pub declared: &'a [String],
    /// The request's journal, when it is recorded or replayed.
    pub journal: Option<&'a Journal>,
}

struct HasSecrets;

impl HasData for HasSecrets {
    type Data<'a> = SecretsView<'a>;
}

pub(super) fn add_to_linker<T: PlatformView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    secrets::add_to_linker::<T, HasSecrets>(linker, |state| {
        let ctx = state.platform().ctx;
        SecretsView {
            secrets: &ctx.platform.secrets,
            service: &ctx.service.name,
            declared: &ctx.service.secrets,
            journal: ctx.journal(),
        }
    })
}

impl Host for SecretsView<'_> {
    async fn get(&mut self, name: String) -> wasmtime::Result<Result<String, SecretError>> {
        traced_fallible("secrets.get", self.service, async {
            let live = || {
                self.secrets
                    .reveal(self.service, self.declared, &name)
                    .map_err(|refusal| match refusal {
                        Refusal::NotDeclared => SecretError::NotDeclared,
                        Refusal::NotFound => SecretError::NotFound,
                        Refusal::Denied => SecretError::Denied,
                    })
            };
            let Some(journal) = self.journal else {
                return Ok(live());
            };
            // A recording keeps whether the read succeeded, never the value; a replay
            // that reaches a read that succeeded reads the value as it is now (reading
            // a secret changes nothing).
            if journal.is_replaying() {
                return match journal
                    .replayed::<Result<String, SecretError>>("secrets.get", &name)?
                {
                    Ok(_) => Ok(live()),
                    Err(refused) => Ok(Err(refused)),
                };
            }
            let result = live();
            let placeholder = result.as_ref().map(|_| SECRET_PLACEHOLDER.to_owned());
            journal.record(
                "secrets.get",
                name.clone(),
                &placeholder.map_err(Clone::clone),
            );
            Ok(result)
        })
        .await
    }
}
