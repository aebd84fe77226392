//! The admin router in process (`oneshot`, no socket, no wasm): every status code of
//! the admin table (200, 201, 204, 400, 401, 404, 405, 409, 413, 503). Deploys of
//! real components are covered end to end in `tests/e2e`.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt as _;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt as _;

use super::{AdminState, router};
use crate::data_dir::DataDir;
use crate::platform::Platform;
use crate::registry::external::ExternalServices;
use crate::registry::health::HealthChecker;
use crate::runtime::{Runtime, RuntimeSettings};
use crate::services::limiter::Scale;
use crate::services::{ServiceDefaults, Services};

const TOKEN: &str = "test-token";
const MAX_UPLOAD: usize = 4096;

struct Admin {
    app: axum::Router,
    services: Arc<Services>,
    data_dir: DataDir,
    _dir: tempfile::TempDir,
}

fn admin() -> Admin {
    admin_with(true)
}

fn admin_with(restored: bool) -> Admin {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = DataDir::open(dir.path()).expect("data_dir");
    let runtime = Runtime::new(
        &RuntimeSettings {
            max_instances: 4,
            max_memory_mb: 16,
            no_pooling: true,
            function_cache_mb: 0,
            max_total_memory_mb: 1024,
            no_baseline: true,
            ..RuntimeSettings::default()
        }
        .options(dir.path().join("cache")),
    )
    .expect("runtime");
    let platform = Platform::builder(dir.path())
        .host_id("test")
        .registry_sweep(Duration::from_secs(60))
        .build()
        .expect("platform");
    let registry = platform.registry.clone();
    let services = Services::new(
        Arc::new(runtime),
        data_dir.clone(),
        ServiceDefaults {
            memory_mb: 16,
            max_memory_mb: 16,
            timeout: Duration::from_secs(5),
            scale: Scale {
                max_concurrency: 4,
                queue: 4,
            },
            max_instances_per_service: 2,
            table_elements: 20_000,
            allow_nested_routes: false,
        },
        platform,
    );
    if restored {
        services.mark_ready();
    }
    let external = Arc::new(
        ExternalServices::new(
            registry.clone(),
            HealthChecker::new(registry),
            dir.path().join("external"),
        )
        .expect("external"),
    );
    let app = router(AdminState::new(
        services.clone(),
        None,
        external,
        Arc::new(crate::access::tokens::TokenStore::open(dir.path(), TOKEN).expect("tokens")),
        Arc::new(
            crate::access::audit::AuditLog::open(dir.path(), Default::default()).expect("audit"),
        ),
        MAX_UPLOAD,
    ));
    Admin {
        app,
        services,
        data_dir,
        _dir: dir,
    }
}

impl Admin {
    /// Send one request with the admin token; answer status and body text.
    async fn send(&self, method: &str, path: &str, body: impl Into<Body>) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(body.into())
            .expect("request");
        self.oneshot(request).await
    }

    async fn oneshot(&self, request: Request<Body>) -> (StatusCode, String) {
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[tokio::test]
async fn liveness_and_metrics_need_no_token() {
    let admin = admin();
    for path in ["/healthz", "/metrics"] {
        let request = Request::get(path).body(Body::empty()).expect("request");
        let (status, _) = admin.oneshot(request).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn readiness_follows_the_restore() {
    let admin = admin();
    let request = Request::get("/readyz")
        .body(Body::empty())
        .expect("request");
    assert_eq!(admin.oneshot(request).await.0, StatusCode::OK);

    let restoring = admin_with(false);
    let request = Request::get("/readyz")
        .body(Body::empty())
        .expect("request");
    assert_eq!(
        restoring.oneshot(request).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Reads answer; changes wait for the restore.
    let (status, _) = restoring.send("GET", "/v1/services", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    let spec = r#"{"endpoints": ["127.0.0.1:9"]}"#;
    let (status, _) = restoring.send("PUT", "/v1/external/db", spec).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn every_v1_call_needs_the_token() {
    let admin = admin();
    let missing = Request::get("/v1/services")
        .body(Body::empty())
        .expect("request");
    assert_eq!(admin.oneshot(missing).await.0, StatusCode::UNAUTHORIZED);
    let wrong = Request::get("/v1/services")
        .header(header::AUTHORIZATION, "Bearer not-the-token")
        .body(Body::empty())
        .expect("request");
    assert_eq!(admin.oneshot(wrong).await.0, StatusCode::UNAUTHORIZED);
    let (status, body) = admin.send("GET", "/v1/services", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, r#"{"services":[]}"#);
}

#[tokio::test]
async fn names_are_checked_before_lookups() {
    let admin = admin();
    for (method, path) in [
        ("GET", "/v1/services/Bad_Name"),
        ("DELETE", "/v1/services/Bad_Name"),
        ("POST", "/v1/services/Bad_Name/rollback"),
        ("POST", "/v1/services/Bad_Name/canary/promote"),
        ("GET", "/v1/external/Bad_Name"),
        ("GET", "/v1/discovery/Bad_Name"),
    ] {
        let (status, body) = admin.send(method, path, Body::empty()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {body}");
        assert!(body.contains("invalid service name"), "{body}");
    }
}

#[tokio::test]
async fn missing_services_are_not_found() {
    let admin = admin();
    for (method, path, body) in [
        ("GET", "/v1/services/nope", ""),
        ("DELETE", "/v1/services/nope", ""),
        ("POST", "/v1/services/nope/rollback", ""),
        (
            "PUT",
            "/v1/services/nope/scale",
            r#"{"max_concurrency": 2}"#,
        ),
        ("PUT", "/v1/services/nope/canary", r#"{"weight": 5}"#),
        ("DELETE", "/v1/services/nope/canary", ""),
        ("POST", "/v1/services/nope/canary/promote", ""),
        ("GET", "/v1/external/nope", ""),
        ("DELETE", "/v1/external/nope", ""),
        ("GET", "/v1/nothing-here", ""),
    ] {
        let (status, text) = admin.send(method, path, body.to_owned()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {text}");
    }
}

#[tokio::test]
async fn bad_bodies_and_parameters_are_client_errors() {
    let admin = admin();
    for (method, path, body) in [
        ("PUT", "/v1/services/hello", "not a component"),
        ("PUT", "/v1/services/hello?canary=101", "not a component"),
        (
            "PUT",
            "/v1/services/hello?max_error_rate=0.5",
            "not a component",
        ),
        ("PUT", "/v1/services/hello/scale", "{not json"),
        ("PUT", "/v1/services/hello/canary", r#"{"weight": 101}"#),
        ("PUT", "/v1/external/db", r#"{"endpoints": []}"#),
        (
            "PUT",
            "/v1/external/db",
            r#"{"endpoints": ["127.0.0.1:1"], "extra": 1}"#,
        ),
    ] {
        let (status, text) = admin.send(method, path, body.to_owned()).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{method} {path} {body}: {text}"
        );
        assert!(text.starts_with(r#"{"error":"#), "{text}");
    }
}

#[tokio::test]
async fn an_oversize_upload_is_refused_before_it_is_read() {
    let admin = admin();
    let request = Request::put("/v1/services/hello")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_LENGTH, (MAX_UPLOAD + 1).to_string())
        .body(Body::from(vec![0u8; MAX_UPLOAD + 1]))
        .expect("request");
    let response = admin
        .app
        .clone()
        .oneshot(request)
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.headers()[header::CONNECTION], "close");
}

#[tokio::test]
async fn external_services_are_created_replaced_shown_and_removed() {
    let admin = admin();
    let spec = r#"{"endpoints": ["127.0.0.1:9"]}"#;
    assert_eq!(
        admin.send("PUT", "/v1/external/db", spec).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        admin.send("PUT", "/v1/external/db", spec).await.0,
        StatusCode::OK
    );
    let (status, body) = admin.send("GET", "/v1/external/db", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("127.0.0.1:9"), "{body}");
    let (status, body) = admin.send("GET", "/v1/discovery/db", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("127.0.0.1:9"), "{body}");
    assert_eq!(
        admin
            .send("DELETE", "/v1/external/db", Body::empty())
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        admin
            .send("DELETE", "/v1/external/db", Body::empty())
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn unsupported_methods_are_refused() {
    let admin = admin();
    let (status, _) = admin.send("PATCH", "/v1/services", Body::empty()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn a_service_that_cannot_be_restored_is_listed_as_failed_and_conflicts_are_409s() {
    use crate::data_dir::{VersionRecord, sha256_hex};
    use crate::services::state::ServiceState;
    let admin = admin_with(false);
    // A persisted service whose component is missing from the data directory.
    let record = VersionRecord {
        name: "broken".into(),
        version: "1".into(),
        digest: sha256_hex(b"never stored"),
        deployed_at: "2026-01-01T00:00:00Z".into(),
        manifest: Default::default(),
    };
    let state = ServiceState {
        current: record,
        history: Vec::new(),
        canary: None,
        scale: None,
    };
    admin
        .data_dir
        .put_service("broken", &state)
        .expect("record");
    admin.services.restore().await.expect("restore");
    admin.services.mark_ready();

    let (status, body) = admin
        .send("GET", "/v1/services/broken", Body::empty())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains(r#""state":"failed""#), "{body}");
    let (status, body) = admin
        .send("POST", "/v1/services/broken/rollback", Body::empty())
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("no earlier version"), "{body}");
    let spec = r#"{"endpoints": ["127.0.0.1:9"]}"#;
    let (status, body) = admin.send("PUT", "/v1/external/broken", spec).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = admin
        .send("DELETE", "/v1/services/broken", Body::empty())
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = admin
        .send("GET", "/v1/services/broken", Body::empty())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Property test: whatever body a client sends to an endpoint that reads one, the
/// answer is a client error (or success), never a server error or a panic.
mod properties {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use serde_json::Value;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(vec![
                        "max_concurrency",
                        "queue",
                        "weight",
                        "version",
                        "endpoints",
                        "health_check",
                        "name",
                        "scope",
                        "services",
                        "path",
                        "x",
                    ])
                    .prop_map(str::to_owned),
                    inner,
                    0..5,
                )
                .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            json_value().prop_map(|v| v.to_string().into_bytes()),
            prop::collection::vec(any::<u8>(), 0..300),
            "\\PC{0,200}".prop_map(String::into_bytes),
        ]
    }

    #[test]
    fn random_bodies_are_client_errors_never_server_errors() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let admin = runtime.block_on(async { admin() });
        let endpoints = prop::sample::select(vec![
            ("PUT", "/v1/services/hello/scale", "application/json"),
            ("PUT", "/v1/services/hello/canary", "application/json"),
            ("POST", "/v1/services/hello/rollback", "application/json"),
            ("PUT", "/v1/external/db", "application/json"),
            ("POST", "/v1/tokens", "application/json"),
            (
                "PUT",
                "/v1/services/fresh",
                "multipart/form-data; boundary=XyZ",
            ),
            ("PUT", "/v1/services/fresh", "application/wasm"),
            ("PUT", "/v1/services/fresh", "text/plain"),
        ]);
        let mut runner = TestRunner::new(Config::with_cases(400));
        runner
            .run(
                &(endpoints, body()),
                |((method, path, content_type), body)| {
                    let request = Request::builder()
                        .method(method)
                        .uri(path)
                        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
                        .header(header::CONTENT_TYPE, content_type)
                        .body(Body::from(body))
                        .expect("request");
                    let (status, text) = runtime.block_on(admin.oneshot(request));
                    prop_assert!(
                        !status.is_server_error(),
                        "{method} {path} ({content_type}) answered {status}: {text}"
                    );
                    Ok(())
                },
            )
            .expect("no body makes the admin API fail");
    }
}
