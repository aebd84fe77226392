//! Who may do what on the admin API, and the record of what was done.
//!
//! - This module is the policy, pure: scopes, service patterns, and whether a grant
//!   permits an action.
//! - [`tokens`] keeps the scoped tokens (hashed) in the data directory.
//! - [`audit`] appends every change and every refused attempt to the audit log.

pub mod audit;
pub mod tokens;

use serde::{Deserialize, Serialize};

pub use crate::policy::glob::{glob_matches, validate_pattern};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// List and show services, external services, events, discovery.
    Read,
    /// `Read`, and deploy, remove, scale, canary and roll back services its
    /// patterns match.
    Deploy,
    /// Everything, including tokens, external services, dead letters and the audit
    /// log.
    Admin,
}

/// What an admin request does, as far as permissions go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Reads anything but the audit log and the tokens.
    Read,
    /// Changes the service `service` (deploy, remove, scale, canary, rollback).
    ChangeService(String),
    /// Anything else: tokens, external services, dead letters, the audit log.
    Administer,
}

/// A scope, and the services it covers (glob patterns; empty: every service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// What it may do.
    pub scope: Scope,
    /// Which services a `deploy` scope may change.
    #[serde(default)]
    pub services: Vec<String>,
}

impl Grant {
    /// Everything.
    pub fn admin() -> Self {
        Self {
            scope: Scope::Admin,
            services: Vec::new(),
        }
    }

    /// Whether this grant permits `action`; the error says why not.
    pub fn permits(&self, action: &Action) -> Result<(), String> {
        match (self.scope, action) {
            (Scope::Admin, _) | (_, Action::Read) => Ok(()),
            (Scope::Deploy, Action::ChangeService(service)) => {
                if self.services.is_empty()
                    || self.services.iter().any(|p| glob_matches(p, service))
                {
                    Ok(())
                } else {
                    Err(format!(
                        "this token may change only services matching {}, not `{service}`",
                        self.services.join(", ")
                    ))
                }
            }
            (Scope::Read, Action::ChangeService(_)) => {
                Err("this token has the `read` scope: it may not change services".into())
            }
            (_, Action::Administer) => Err(format!(
                "this needs the `admin` scope; the token has `{}`",
                self.scope.name()
            )),
        }
    }
}

impl Scope {
    /// Its name, as in the API.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Deploy => "deploy",
            Scope::Admin => "admin",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let read = Grant {
            scope: Scope::Read,
            services: vec![],
        };
        let deploy = Grant {
            scope: Scope::Deploy,
            services: vec!["shop-*".into()],
        };
        let change = |s: &str| Action::ChangeService(s.into());
        assert!(read.permits(&Action::Read).is_ok());
        assert!(read.permits(&change("shop-a")).is_err());
        assert!(read.permits(&Action::Administer).is_err());
        assert!(deploy.permits(&change("shop-a")).is_ok());
        let denied = deploy.permits(&change("billing")).expect_err("refused");
        assert!(denied.contains("shop-*"), "{denied}");
        assert!(deploy.permits(&Action::Administer).is_err());
        assert!(Grant::admin().permits(&Action::Administer).is_ok());
        let everything = Grant {
            scope: Scope::Deploy,
            services: vec![],
        };
        assert!(everything.permits(&change("billing")).is_ok());
    }
}
