//! Who may call a service: its manifest's `[inbound] allowed_callers` patterns,
//! carried on its registry entries as tags so every caller (on any host) can refuse a
//! call before sending it, and the target can check the host-asserted caller again.

use super::glob::glob_matches;

/// Tag of an instance whose callers are restricted.
pub const RESTRICTED_TAG: &str = "inbound:restricted";
/// Prefix of the tags that name allowed callers (patterns).
pub const ALLOW_PREFIX: &str = "inbound:allow:";

/// The registry tags for `allowed_callers` (`None`: anyone may call).
pub fn tags(allowed_callers: Option<&[String]>) -> Vec<String> {
    match allowed_callers {
        None => Vec::new(),
        Some(patterns) => std::iter::once(RESTRICTED_TAG.to_owned())
            .chain(patterns.iter().map(|p| format!("{ALLOW_PREFIX}{p}")))
            .collect(),
    }
}

/// Whether service `caller` may call an instance with `tags`; the error says why not.
pub fn permits(caller: &str, target: &str, tags: &[String]) -> Result<(), String> {
    if !tags.iter().any(|t| t == RESTRICTED_TAG) {
        return Ok(());
    }
    let allowed: Vec<&str> = tags
        .iter()
        .filter_map(|t| t.strip_prefix(ALLOW_PREFIX))
        .collect();
    if allowed.iter().any(|pattern| glob_matches(pattern, caller)) {
        Ok(())
    } else {
        Err(format!(
            "`{target}` does not accept calls from `{caller}` (its manifest allows: {})",
            if allowed.is_empty() {
                "no service".to_owned()
            } else {
                allowed.join(", ")
            }
        ))
    }
}

/// Whether a client's request (no calling service) for `path`, below the service's
/// route, may go through the gateway to a service that is `public` and keeps
/// `private_paths` to services.
pub fn open_to_clients(public: bool, private_paths: &[String], path: &str) -> bool {
    public
        && !private_paths.iter().any(|private| {
            let private = private.trim_end_matches('/');
            private.is_empty()
                || path == private
                || path
                    .strip_prefix(private)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_reach_public_paths_only() {
        let private = ["/mode".to_owned(), "/charges/".to_owned()];
        assert!(open_to_clients(true, &private, "/"));
        assert!(open_to_clients(true, &private, "/orders"));
        assert!(open_to_clients(true, &private, "/modes"));
        assert!(!open_to_clients(true, &private, "/mode"));
        assert!(!open_to_clients(true, &private, "/mode/x"));
        assert!(!open_to_clients(true, &private, "/charges"));
        assert!(!open_to_clients(true, &private, "/charges/o-1/refund"));
        assert!(!open_to_clients(false, &[], "/"));
        assert!(!open_to_clients(true, &["/".to_owned()], "/anything"));
    }

    #[test]
    fn only_listed_callers_get_through_a_restricted_service() {
        let open = tags(None);
        assert!(permits("anyone", "db", &open).is_ok());
        let restricted = tags(Some(&["orders".into(), "shop-*".into()]));
        assert!(permits("orders", "payment", &restricted).is_ok());
        assert!(permits("shop-web", "payment", &restricted).is_ok());
        let denied = permits("shipping", "payment", &restricted).expect_err("denied");
        assert!(
            denied.contains("shipping") && denied.contains("orders, shop-*"),
            "{denied}"
        );
        let nobody = tags(Some(&[]));
        assert!(
            permits("orders", "vault", &nobody)
                .expect_err("denied")
                .contains("no service")
        );
    }
}
