//! `hello`: a small service written with the Shoal SDK.
//!
//! - `GET /` greets, using the `greeting` value from the manifest's `[config]`.
//! - `GET /config` lists the service's configuration.
//! - `ANY /echo` answers with the method, authority, path, query, headers and body it
//!   received.

use shoal_sdk::http::{Request, Response};

fn handle(req: Request) -> Response {
    match req.path() {
        "/" => greet(&req),
        "/config" => {
            let lines: String = shoal_sdk::config::all()
                .into_iter()
                .map(|(key, value)| format!("{key}={value}\n"))
                .collect();
            Response::text(200, lines)
        }
        "/echo" => echo(&req),
        other => Response::text(404, format!("no route for {other}\n")),
    }
}

fn greet(req: &Request) -> Response {
    let greeting = shoal_sdk::config::get("greeting").unwrap_or_else(|| "Hello".to_owned());
    let name = req
        .query_param("name")
        .unwrap_or_else(|| "world".to_owned());
    shoal_sdk::log::info("greeted", &[("name", &name)]);
    let version = shoal_sdk::config::get("release").unwrap_or_default();
    Response::text(200, format!("{greeting}, {name}!\n")).with_header("x-hello-release", &version)
}

fn echo(req: &Request) -> Response {
    let mut out = format!(
        "method: {}\nauthority: {}\npath: {}\nquery: {}\n",
        req.method(),
        req.authority().unwrap_or(""),
        req.path(),
        req.query().unwrap_or("")
    );
    for (name, value) in req.headers() {
        out.push_str(&format!(
            "header {name}: {}\n",
            String::from_utf8_lossy(value)
        ));
    }
    out.push_str(&format!("body: {}\n", req.body_text()));
    Response::text(200, out)
}

shoal_sdk::http_service!(handle);
