//! Authentication, authorization and auditing of the admin API.
//!
//! Every `/v1` request presents `Authorization: Bearer <token>`. The token is looked
//! up (by hash) in the host's [`TokenStore`]; an unknown or revoked one is a 401. Its
//! grant must permit what the request does ([`classify`]), or it is a 403 that says
//! why. Every request that changes something, and every refused one, is appended to
//! the [`AuditLog`] before the answer goes out.

use anyhow::{Context as _, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use super::AdminState;
use super::error::ApiError;
use crate::access::Action;
use crate::access::audit::{Entry, Outcome};

/// File in the data directory that holds a generated token.
pub const TOKEN_FILE: &str = "admin-token";
/// Bytes of an answer read back for the audit log (its digest or error).
const AUDITED_BODY_BYTES: usize = 64 * 1024;

/// The token from the data directory, generated (mode 0600) on first start.
/// Returns the token and whether it was just created.
pub fn load_or_create_token(data_dir: &Path) -> Result<(String, bool)> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok((token.trim().to_owned(), false)),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    }
    let token = format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    Ok((token, true))
}

/// What a request does: its permission, and its audit name and target when it
/// changes something (`None`: a read, audited only when refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    /// What the token must permit.
    pub action: Action,
    /// The audit log's name for it, for changes.
    pub audited: Option<&'static str>,
    /// What it acts on.
    pub target: Option<String>,
}

/// Classify an admin request by method and path (below `/v1`). Pure.
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> Classified {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let read = |action| Classified {
        action,
        audited: None,
        target: None,
    };
    let change = |audited: &'static str, target: &str, action| Classified {
        action,
        audited: Some(audited),
        target: Some(target.to_owned()),
    };
    let service = |name: &str| Action::ChangeService(name.to_owned());
    let canary_deploy = query.is_some_and(|q| q.split('&').any(|p| p.starts_with("canary=")));
    match (method.as_str(), parts.as_slice()) {
        // An operator's call to a service, whatever its method, is a change of it.
        (_, ["services", name, "call", ..]) => change("service.call", name, service(name)),
        // A service's data is read and written only by who may change the service.
        ("GET" | "HEAD", ["services", name, "data"]) => change("data.export", name, service(name)),
        ("PUT", ["services", name, "data"]) => change("data.import", name, service(name)),
        ("DELETE", ["services", name, "data"]) => change("data.purge", name, service(name)),
        // Recordings hold what clients sent: read only by who may change the service.
        ("GET" | "HEAD", ["services", name, "recordings", ..]) => {
            change("recordings.read", name, service(name))
        }
        ("PUT", ["services", name, "recording"]) => change("recording.set", name, service(name)),
        ("POST", ["services", name, "recordings", _, "replay"]) => {
            change("recording.replay", name, service(name))
        }
        ("GET" | "HEAD", ["audit"] | ["audit", "verify"] | ["tokens"] | ["secrets"]) => {
            read(Action::Administer)
        }
        ("GET" | "HEAD", _) => read(Action::Read),
        ("PUT", ["services", name]) if canary_deploy => {
            change("canary.deploy", name, service(name))
        }
        ("PUT", ["services", name]) => change("deploy", name, service(name)),
        ("DELETE", ["services", name]) => change("remove", name, service(name)),
        ("PUT", ["services", name, "scale"]) => change("scale", name, service(name)),
        ("POST", ["services", name, "rollback"]) => change("rollback", name, service(name)),
        ("PUT", ["services", name, "canary"]) => change("canary.weight", name, service(name)),
        ("DELETE", ["services", name, "canary"]) => change("canary.abort", name, service(name)),
        ("POST", ["services", name, "canary", "promote"]) => {
            change("canary.promote", name, service(name))
        }
        ("POST", ["hosts", id, "drain"]) => change("host.drain", id, Action::Administer),
        ("DELETE", ["hosts", id, "drain"]) => change("host.undrain", id, Action::Administer),
        ("PUT", ["external", name]) => change("external.register", name, Action::Administer),
        ("DELETE", ["external", name]) => change("external.remove", name, Action::Administer),
        ("POST", ["events", "dead", subscriber, event, "replay"]) => change(
            "events.replay",
            &format!("{subscriber}/{event}"),
            Action::Administer,
        ),
        ("DELETE", ["events", "dead", subscriber, event]) => change(
            "events.drop",
            &format!("{subscriber}/{event}"),
            Action::Administer,
        ),
        ("POST", ["tokens"]) => Classified {
            action: Action::Administer,
            audited: Some("token.create"),
            target: None,
        },
        ("DELETE", ["tokens", id]) => change("token.revoke", id, Action::Administer),
        ("PUT", ["secrets", name]) => change("secret.put", name, Action::Administer),
        ("DELETE", ["secrets", name]) => change("secret.remove", name, Action::Administer),
        _ => Classified {
            action: Action::Administer,
            audited: Some("unknown"),
            target: Some(path.chars().take(128).collect()),
        },
    }
}

/// Who made an authorized request: its token's id and grant.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's id (`operator` for the operator's token).
    pub token_id: String,
    /// What it may do.
    pub grant: crate::access::Grant,
}

/// Middleware: authenticate the token, check its grant, run the request, and audit.
pub async fn authorize(
    State(state): State<AdminState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let path = path.strip_prefix("/v1").unwrap_or(path).to_owned();
    let classified = classify(request.method(), &path, request.uri().query());
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    // A refusal is sent before the body is read; the client must not reuse the
    // connection for its next request, or that request meets the closed socket.
    let unread_body = super::carries_body(request.headers());
    let refused = |token_id: Option<String>, status: StatusCode, reason: String| {
        let entry = entry(
            &classified,
            token_id,
            Outcome::Refused,
            Some(status),
            None,
            Some(reason.clone()),
        );
        (entry, ApiError::new(status, reason))
    };
    let identity = match presented {
        None => Err(refused(
            None,
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <token>` header".into(),
        )),
        Some(secret) => match state.tokens.authenticate(secret) {
            None => Err(refused(
                None,
                StatusCode::UNAUTHORIZED,
                "the admin token is wrong: unknown or revoked".into(),
            )),
            Some((id, grant)) => match grant.permits(&classified.action) {
                Err(reason) => Err(refused(Some(id), StatusCode::FORBIDDEN, reason)),
                Ok(()) => Ok((id, grant)),
            },
        },
    };
    let token_id = match identity {
        Ok((id, grant)) => {
            // Handlers may ask who is calling (`/v1/whoami`).
            request.extensions_mut().insert(Caller {
                token_id: id.clone(),
                grant,
            });
            id
        }
        Err((entry, error)) => {
            if let Err(error) = state.record(entry).await {
                tracing::error!(error = %format!("{error:#}"), "the audit log lost a refusal");
            }
            let status = error.status;
            let error = if unread_body { error.closing() } else { error };
            let mut response = error.into_response();
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            return response;
        }
    };
    if classified.audited.is_none() {
        return next.run(request).await;
    }
    // A change that cannot be audited is not made.
    let started = entry(
        &classified,
        Some(token_id.clone()),
        Outcome::Started,
        None,
        None,
        None,
    );
    if let Err(error) = state.record(started).await {
        tracing::error!(error = %format!("{error:#}"), "refusing a change the audit log cannot record");
        let error = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the audit log cannot be written, so no change is made; see the host's log",
        );
        return if unread_body { error.closing() } else { error }.into_response();
    }
    let response = next.run(request).await;
    // Read a small answer back for its digest or error, then pass it on; a larger
    // one (or one of unknown size) passes untouched and is audited by status.
    let (parts, body) = response.into_parts();
    let small = axum::body::HttpBody::size_hint(&body)
        .upper()
        .is_some_and(|size| size <= AUDITED_BODY_BYTES as u64);
    let (body, json) = if small {
        match axum::body::to_bytes(body, AUDITED_BODY_BYTES).await {
            Ok(bytes) => {
                let json = serde_json::from_slice(&bytes).unwrap_or_default();
                (Body::from(bytes), json)
            }
            Err(error) => {
                tracing::warn!(%error, "reading an audited answer failed");
                (Body::empty(), serde_json::Value::Null)
            }
        }
    } else {
        (body, serde_json::Value::Null)
    };
    let status = parts.status;
    let outcome = if status.is_success() {
        Outcome::Ok
    } else if status.is_server_error() {
        Outcome::Failed
    } else {
        Outcome::Refused
    };
    let mut classified = classified;
    if classified.target.is_none() {
        // A new token's id is known only from the answer.
        classified.target = json["id"].as_str().map(str::to_owned);
    }
    let digest = json["digest"].as_str().map(str::to_owned);
    let reason = json["error"]
        .as_str()
        .map(|e| e.chars().take(512).collect());
    let record = entry(
        &classified,
        Some(token_id),
        outcome,
        Some(status),
        digest,
        reason,
    );
    if let Err(error) = state.record(record).await {
        // The change ran and its start is on record; only its outcome is missing.
        tracing::error!(error = %format!("{error:#}"), "the audit log lost a change's outcome");
    }
    Response::from_parts(parts, body)
}

fn entry(
    classified: &Classified,
    token_id: Option<String>,
    outcome: Outcome,
    status: Option<StatusCode>,
    digest: Option<String>,
    reason: Option<String>,
) -> Entry {
    let action = classified.audited.unwrap_or("read");
    let mut entry = Entry::new(token_id, action, classified.target.clone(), outcome);
    entry.status = status.map(|status| status.as_u16());
    entry.digest = digest;
    entry.reason = reason;
    entry
}

impl AdminState {
    /// Append `entry` to the audit log (flushed to disk) before the answer goes out.
    async fn record(&self, entry: Entry) -> anyhow::Result<()> {
        let audit = self.audit.clone();
        tokio::task::spawn_blocking(move || audit.append(entry))
            .await
            .map_err(|error| anyhow::anyhow!("the audit log task failed: {error}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn token_is_created_once_with_private_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (first, created) = load_or_create_token(dir.path()).expect("create");
        assert!(created);
        assert_eq!(first.len(), 64);
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (second, created) = load_or_create_token(dir.path()).expect("load");
        assert!(!created);
        assert_eq!(first, second);
    }

    #[test]
    fn requests_are_classified() {
        let c = |m: &str, p: &str, q: Option<&str>| {
            classify(&Method::from_bytes(m.as_bytes()).expect("method"), p, q)
        };
        assert_eq!(c("GET", "/services", None).action, Action::Read);
        assert_eq!(c("GET", "/services", None).audited, None);
        assert_eq!(c("GET", "/audit", None).action, Action::Administer);
        // A service's data is read and written only by who may change the service.
        // So are its recordings (what its clients sent) and which requests it records.
        for (method, path, audited) in [
            ("GET", "/services/a/data", "data.export"),
            ("PUT", "/services/a/data", "data.import"),
            ("DELETE", "/services/a/data", "data.purge"),
            ("GET", "/services/a/recordings", "recordings.read"),
            ("GET", "/services/a/recordings/0000-1", "recordings.read"),
            (
                "POST",
                "/services/a/recordings/0000-1/replay",
                "recording.replay",
            ),
            ("PUT", "/services/a/recording", "recording.set"),
        ] {
            let data = c(method, path, None);
            assert_eq!(
                (data.action, data.audited),
                (Action::ChangeService("a".into()), Some(audited))
            );
        }
        assert_eq!(c("GET", "/tokens", None).action, Action::Administer);
        let deploy = c("PUT", "/services/shop-a", None);
        assert_eq!(deploy.action, Action::ChangeService("shop-a".into()));
        assert_eq!(deploy.audited, Some("deploy"));
        assert_eq!(
            c("PUT", "/services/a", Some("canary=10")).audited,
            Some("canary.deploy")
        );
        assert_eq!(c("DELETE", "/services/a", None).audited, Some("remove"));
        assert_eq!(c("PUT", "/services/a/scale", None).audited, Some("scale"));
        assert_eq!(
            c("POST", "/services/a/rollback", None).audited,
            Some("rollback")
        );
        assert_eq!(
            c("POST", "/services/a/canary/promote", None).audited,
            Some("canary.promote")
        );
        assert_eq!(c("PUT", "/external/db", None).action, Action::Administer);
        assert_eq!(c("POST", "/tokens", None).audited, Some("token.create"));
        let revoke = c("DELETE", "/tokens/tok_1", None);
        assert_eq!(
            (revoke.audited, revoke.target.as_deref()),
            (Some("token.revoke"), Some("tok_1"))
        );
        assert_eq!(c("PATCH", "/services/a", None).action, Action::Administer);
        // An operator's call is a change of the service, whatever its method.
        for method in ["GET", "POST", "DELETE"] {
            let call = c(method, "/services/pay/call/charges/o-1/refund", None);
            assert_eq!(call.action, Action::ChangeService("pay".into()));
            assert_eq!(call.audited, Some("service.call"));
        }
        assert_eq!(c("GET", "/secrets", None).action, Action::Administer);
        let secret = c("PUT", "/secrets/db", None);
        assert_eq!(
            (secret.action, secret.audited, secret.target.as_deref()),
            (Action::Administer, Some("secret.put"), Some("db"))
        );
        assert_eq!(
            c("DELETE", "/secrets/db", None).audited,
            Some("secret.remove")
        );
    }
}
