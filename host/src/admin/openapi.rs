//! `GET /v1/openapi.json`: the admin API's OpenAPI 3.1 document, derived from the
//! handlers and from the request and response types of [`shoal_api`] (the same types
//! the handlers, the CLI and the tests use), never written by hand. Every `/v1`
//! endpoint is in it; a test checks that against the router.

use axum::Json;
use utoipa::OpenApi as _;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

use super::{
    access, cluster, dashboard, data, events, external, logs, recordings, secrets, services,
};

/// The admin API: every `/v1` endpoint, with the shared types ([`shoal_api`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Shoal admin API",
        description = "Deploy, inspect, scale, roll back and remove the services of a \
                       Shoal host, or of the cluster it belongs to. Every call needs `Authorization: Bearer <token>`."
    ),
    paths(
        services::list,
        services::show,
        services::deploy,
        services::remove,
        services::scale,
        services::rollback,
        services::canary_weight,
        services::promote,
        services::abort_canary,
        services::call,
        events::show,
        events::replay,
        events::drop_dead,
        external::list,
        external::show,
        external::put,
        external::remove,
        external::discover,
        access::create,
        access::list,
        access::revoke,
        access::audit,
        access::verify_audit,
        dashboard::whoami,
        dashboard::host,
        data::export,
        data::import,
        data::purge,
        dashboard::stats,
        logs::logs,
        recordings::list,
        recordings::show,
        recordings::replay,
        recordings::set_mode,
        secrets::put,
        secrets::list,
        secrets::remove,
        cluster::show,
        cluster::drain,
        cluster::undrain,
    ),
    components(schemas(shoal_api::ErrorBody)),
    modifiers(&BearerToken),
    security(("token" = [])),
    tags(
        (name = "services", description = "Deployed services: versions, canaries, limits, load, faults"),
        (name = "events", description = "Subscriptions, deliveries waiting, dead letters"),
        (name = "external", description = "HTTP services an operator registers, and discovery"),
        (name = "access", description = "Scoped tokens, the calling token, the audit log"),
        (name = "secrets", description = "The operator's secrets for services: names in, values never out"),
        (name = "cluster", description = "The hosts of a cluster: state, labels, memory, placements, drain"),
    )
)]
pub struct AdminApi;

/// Declares the bearer token every call carries.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// `GET /v1/openapi.json`
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    let mut document = AdminApi::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    Json(document)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_every_typed_path_and_its_shapes() {
        let document = serde_json::to_value(AdminApi::openapi()).expect("serialises");
        let paths = document["paths"].as_object().expect("paths");
        for path in [
            "/v1/services",
            "/v1/services/{name}",
            "/v1/services/{name}/scale",
            "/v1/services/{name}/rollback",
            "/v1/services/{name}/canary",
            "/v1/services/{name}/canary/promote",
            "/v1/events",
            "/v1/external/{name}",
            "/v1/discovery/{name}",
            "/v1/tokens",
            "/v1/audit",
            "/v1/whoami",
            "/v1/host",
            "/v1/services/{name}/data",
            "/v1/stats",
            "/v1/services/{name}/logs",
            "/v1/services/{name}/recordings",
            "/v1/services/{name}/recordings/{id}",
            "/v1/services/{name}/recording",
            "/v1/secrets/{name}",
        ] {
            assert!(paths.contains_key(path), "{path} is missing");
        }
        let schemas = document["components"]["schemas"]
            .as_object()
            .expect("schemas");
        for schema in [
            "Service",
            "RunningService",
            "ScaleRequest",
            "ErrorBody",
            "EventsView",
        ] {
            assert!(schemas.contains_key(schema), "{schema} is missing");
        }
        // Every route of the /v1 router (but the document itself) is documented.
        let source = include_str!("mod.rs");
        let v1 = source
            .split("let v1 = Router::new()")
            .nth(1)
            .and_then(|rest| rest.split("Router::new()").next())
            .expect("the /v1 router");
        let routes: Vec<String> = v1
            .split(".route(")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
            .filter(|route| *route != "/openapi.json")
            // A wildcard segment (`{*path}`) is a plain parameter in OpenAPI.
            .map(|route| format!("/v1{}", route.replace("{*", "{")))
            .collect();
        assert!(routes.len() >= 20, "{routes:?}");
        for route in &routes {
            assert!(paths.contains_key(route), "{route} is not documented");
        }
        // A request's required fields come from the type.
        assert_eq!(
            schemas["CanaryWeightRequest"]["required"],
            serde_json::json!(["weight"])
        );
    }
}
