//! The service manifest: what an operator says about a service at deploy time.
//!
//! ```toml
//! version = "1.2.0"          # shown by `shoal ls`; defaults to the digest prefix
//! route = "/api/hello"       # gateway path prefix; defaults to "/<name>"
//!
//! [config]                   # values the service reads through shoal:platform/config
//! greeting = "Hi"
//!
//! [limits]
//! memory_mb = 64             # linear memory per instance
//! timeout_ms = 30000         # wall-clock and CPU deadline per request
//! ```
//!
//! Unknown keys are errors, so a typo never silently does nothing.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// Longest accepted config value, in bytes.
const MAX_CONFIG_VALUE_BYTES: usize = 64 * 1024;
/// Longest accepted request deadline.
const MAX_TIMEOUT_MS: u64 = 10 * 60 * 1000;

/// A parsed and validated manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Version label of this deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Gateway path prefix that routes to this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Configuration values handed to the service.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
}

/// Per-instance resource limits; unset values take the host's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory per instance, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// Deadline per request, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// A manifest that cannot be accepted, naming the field and the reason.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// Not valid TOML, or a field of the wrong type, or an unknown field.
    #[error("invalid manifest: {0}")]
    Syntax(String),
    /// A field with a value outside what it allows.
    #[error("invalid manifest: field `{field}`: {reason}")]
    Field {
        /// Dotted path of the field, e.g. `limits.memory_mb`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Manifest {
    /// Parse and validate manifest text. `max_memory_mb` is the host's ceiling.
    pub fn parse(text: &str, max_memory_mb: u32) -> Result<Self, ManifestError> {
        let manifest: Manifest = toml::from_str(text)
            .map_err(|error| ManifestError::Syntax(error.to_string().trim().to_owned()))?;
        manifest.validate(max_memory_mb)?;
        Ok(manifest)
    }

    /// Check every field's value.
    pub fn validate(&self, max_memory_mb: u32) -> Result<(), ManifestError> {
        if let Some(version) = &self.version {
            let valid_chars = version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
            if version.is_empty() || version.len() > 64 || !valid_chars {
                return Err(field(
                    "version",
                    "must be 1 to 64 characters of letters, digits, `.`, `-`, `_` or `+`",
                ));
            }
        }
        if let Some(route) = &self.route {
            validate_route(route).map_err(|reason| field("route", reason))?;
        }
        for (key, value) in &self.config {
            if key.is_empty() || key.len() > 128 {
                return Err(field("config", "keys must be 1 to 128 characters"));
            }
            if value.len() > MAX_CONFIG_VALUE_BYTES {
                return Err(field(
                    &format!("config.{key}"),
                    "value is longer than 64 KiB",
                ));
            }
        }
        if let Some(memory_mb) = self.limits.memory_mb
            && (memory_mb == 0 || memory_mb > max_memory_mb)
        {
            return Err(field(
                "limits.memory_mb",
                &format!("must be between 1 and {max_memory_mb} (the host's --max-memory-mb)"),
            ));
        }
        if let Some(timeout_ms) = self.limits.timeout_ms
            && (timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS)
        {
            return Err(field(
                "limits.timeout_ms",
                &format!("must be between 1 and {MAX_TIMEOUT_MS}"),
            ));
        }
        Ok(())
    }
}

fn field(name: &str, reason: &str) -> ManifestError {
    ManifestError::Field {
        field: name.to_owned(),
        reason: reason.to_owned(),
    }
}

/// A route is `/` or `/segment[/segment...]` of URL-safe characters.
fn validate_route(route: &str) -> Result<(), &'static str> {
    if route == "/" {
        return Ok(());
    }
    if !route.starts_with('/') || route.ends_with('/') || route.len() > 256 {
        return Err("must start with `/`, not end with `/`, and be at most 256 characters");
    }
    for segment in route[1..].split('/') {
        let safe = segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'));
        if segment.is_empty() || segment == "." || segment == ".." || !safe {
            return Err(
                "segments must be non-empty and use only letters, digits, `-`, `_`, `.`, `~`",
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_manifest() {
        let manifest = Manifest::parse(
            "version = \"1.0.0\"\nroute = \"/api/hi\"\n[config]\ngreeting = \"Hi\"\n[limits]\nmemory_mb = 16\ntimeout_ms = 500\n",
            256,
        )
        .expect("valid manifest");
        assert_eq!(manifest.version.as_deref(), Some("1.0.0"));
        assert_eq!(manifest.route.as_deref(), Some("/api/hi"));
        assert_eq!(manifest.config["greeting"], "Hi");
        assert_eq!(manifest.limits.memory_mb, Some(16));
    }

    #[test]
    fn empty_manifest_is_valid() {
        assert_eq!(
            Manifest::parse("", 256).expect("empty"),
            Manifest::default()
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let error = Manifest::parse("verison = \"1\"", 256).expect_err("typo");
        assert!(error.to_string().contains("verison"), "{error}");
    }

    #[test]
    fn wrong_type_is_reported() {
        let error = Manifest::parse("[limits]\nmemory_mb = \"lots\"", 256).expect_err("type");
        assert!(error.to_string().contains("memory_mb"), "{error}");
    }

    #[test]
    fn limits_are_bounded() {
        let error = Manifest::parse("[limits]\nmemory_mb = 100000", 256).expect_err("too big");
        assert!(error.to_string().contains("limits.memory_mb"), "{error}");
        let error = Manifest::parse("[limits]\ntimeout_ms = 0", 256).expect_err("zero");
        assert!(error.to_string().contains("limits.timeout_ms"), "{error}");
    }

    #[test]
    fn routes_are_checked() {
        for good in ["/", "/a", "/api/v1.2/x_y"] {
            assert!(validate_route(good).is_ok(), "{good}");
        }
        for bad in ["", "a", "/a/", "//", "/a/../b", "/a b", "/ä"] {
            assert!(validate_route(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn version_is_checked() {
        assert!(Manifest::parse("version = \"\"", 256).is_err());
        assert!(Manifest::parse("version = \"1 0\"", 256).is_err());
        assert!(Manifest::parse("version = \"1.0.0-rc.1+b7\"", 256).is_ok());
    }
}
