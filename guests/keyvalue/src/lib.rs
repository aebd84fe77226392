//! A portable component: `wasi:http` in, `wasi:keyvalue@0.2.0-draft2` for its data,
//! nothing of Shoal's. It runs unchanged on any host that offers both.
//!
//! - `GET|PUT|DELETE /kv/{key}`: get, set (the body) and delete; `GET /exists/{key}`.
//! - `POST /incr/{key}?by=N`: atomic increment; answers the new value.
//! - `POST /cas/{key}?interfere=1`: read the key for a compare-and-swap, let another
//!   write change it (with `interfere`), swap in the body, and on `cas-failed` swap
//!   again with the fresh handle. Answers what happened, one step a line.
//! - `GET /keys`: every key, page by page (`pages` says how many pages it took).
//! - `POST /many?n=N`: `set-many` of `k00000`… (N keys); `GET /many?keys=a,b`:
//!   `get-many`; `DELETE /many?keys=a,b`: `delete-many`.
//! - `GET /open/{identifier}`: opens another bucket; answers the error.

wit_bindgen::generate!({
    inline: "
        package example:keyvalue-user;
        world user {
            import wasi:keyvalue/store@0.2.0-draft2;
            import wasi:keyvalue/atomics@0.2.0-draft2;
            import wasi:keyvalue/batch@0.2.0-draft2;
        }
    ",
    path: "../../wit/deps/keyvalue",
    world: "example:keyvalue-user/user",
    generate_all,
});

use wasi::keyvalue::{atomics, batch, store};
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct KeyValueUser;

/// Largest request body read.
const MAX_BODY: usize = 2 * 1024 * 1024;

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let mut body = Vec::new();
    let Ok(incoming) = request.consume() else {
        return body;
    };
    if let Ok(stream) = incoming.stream() {
        while body.len() < MAX_BODY {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(_) => break,
            }
        }
    }
    body
}

fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn describe(error: &store::Error) -> String {
    match error {
        store::Error::NoSuchStore => "no-such-store".into(),
        store::Error::AccessDenied => "access-denied".into(),
        store::Error::Other(text) => format!("other: {text}"),
    }
}

fn failed(error: store::Error) -> (u16, String) {
    (500, describe(&error))
}

fn compare_and_swap(
    bucket: &store::Bucket,
    key: &str,
    value: &[u8],
    interfere: bool,
) -> (u16, String) {
    let mut steps = Vec::new();
    let cas = match atomics::Cas::new(bucket, key) {
        Ok(cas) => cas,
        Err(error) => return failed(error),
    };
    let seen = cas.current().ok().flatten().unwrap_or_default();
    steps.push(format!("read {}", String::from_utf8_lossy(&seen)));
    if interfere {
        if let Err(error) = bucket.set(key, b"interfered") {
            return failed(error);
        }
        steps.push("interfered".into());
    }
    match atomics::swap(cas, value) {
        Ok(()) => steps.push("swapped".into()),
        Err(atomics::CasError::StoreError(error)) => return failed(error),
        Err(atomics::CasError::CasFailed(fresh)) => {
            let seen = fresh.current().ok().flatten().unwrap_or_default();
            steps.push(format!(
                "cas-failed, now {}",
                String::from_utf8_lossy(&seen)
            ));
            match atomics::swap(fresh, value) {
                Ok(()) => steps.push("swapped".into()),
                Err(atomics::CasError::StoreError(error)) => return failed(error),
                Err(atomics::CasError::CasFailed(_)) => steps.push("cas-failed again".into()),
            }
        }
    }
    (200, steps.join("\n"))
}

fn all_keys(bucket: &store::Bucket) -> (u16, String) {
    let mut keys = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = match bucket.list_keys(cursor.as_deref()) {
            Ok(page) => page,
            Err(error) => return failed(error),
        };
        pages += 1;
        keys.extend(page.keys);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    (
        200,
        format!("pages {pages}\nkeys {}\n{}", keys.len(), keys.join("\n")),
    )
}

fn route(request: &IncomingRequest) -> (u16, String) {
    let path_and_query = request.path_with_query().unwrap_or_default();
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query.as_str(), ""));
    let method = request.method();
    if let Some(identifier) = path.strip_prefix("/open/") {
        return match store::open(identifier) {
            Ok(_) => (200, "opened".into()),
            Err(error) => (404, describe(&error)),
        };
    }
    let bucket = match store::open("default") {
        Ok(bucket) => bucket,
        Err(error) => return failed(error),
    };
    let keys_param = || -> Vec<String> {
        query_value(query, "keys")
            .unwrap_or("")
            .split(',')
            .filter(|key| !key.is_empty())
            .map(str::to_owned)
            .collect()
    };
    match (method, path) {
        (Method::Get, path) if path.starts_with("/kv/") => match bucket.get(&path[4..]) {
            Ok(Some(value)) => (200, String::from_utf8_lossy(&value).into_owned()),
            Ok(None) => (404, "absent".into()),
            Err(error) => failed(error),
        },
        (Method::Put, path) if path.starts_with("/kv/") => {
            match bucket.set(&path[4..], &read_body(request)) {
                Ok(()) => (200, "set".into()),
                Err(error) => failed(error),
            }
        }
        (Method::Delete, path) if path.starts_with("/kv/") => match bucket.delete(&path[4..]) {
            Ok(()) => (200, "deleted".into()),
            Err(error) => failed(error),
        },
        (Method::Get, path) if path.starts_with("/exists/") => match bucket.exists(&path[8..]) {
            Ok(exists) => (200, exists.to_string()),
            Err(error) => failed(error),
        },
        (Method::Post, path) if path.starts_with("/incr/") => {
            let by = query_value(query, "by")
                .and_then(|by| by.parse().ok())
                .unwrap_or(1);
            match atomics::increment(&bucket, &path[6..], by) {
                Ok(value) => (200, value.to_string()),
                Err(error) => failed(error),
            }
        }
        (Method::Post, path) if path.starts_with("/cas/") => {
            let interfere = query_value(query, "interfere") == Some("1");
            compare_and_swap(&bucket, &path[5..], &read_body(request), interfere)
        }
        (Method::Get, "/keys") => all_keys(&bucket),
        (Method::Post, "/many") => {
            let n: usize = query_value(query, "n")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let pairs: Vec<(String, Vec<u8>)> = (0..n)
                .map(|i| (format!("k{i:05}"), i.to_string().into_bytes()))
                .collect();
            match batch::set_many(&bucket, &pairs) {
                Ok(()) => (200, format!("set {n}")),
                Err(error) => failed(error),
            }
        }
        (Method::Get, "/many") => match batch::get_many(&bucket, &keys_param()) {
            Ok(found) => {
                let lines: Vec<String> = found
                    .into_iter()
                    .map(|entry| match entry {
                        Some((key, value)) => format!("{key}={}", String::from_utf8_lossy(&value)),
                        None => "-".into(),
                    })
                    .collect();
                (200, lines.join("\n"))
            }
            Err(error) => failed(error),
        },
        (Method::Delete, "/many") => match batch::delete_many(&bucket, &keys_param()) {
            Ok(()) => (200, "deleted".into()),
            Err(error) => failed(error),
        },
        _ => (404, "no such route".into()),
    }
}

impl Guest for KeyValueUser {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let (status, text) = route(&request);
        let headers = Fields::new();
        let _ = headers.append("content-type", b"text/plain");
        let response = OutgoingResponse::new(headers);
        let _ = response.set_status_code(status);
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(stream) = body.write() {
            for chunk in text.as_bytes().chunks(4096) {
                if stream.blocking_write_and_flush(chunk).is_err() {
                    break;
                }
            }
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

wasip2::http::proxy::export!(KeyValueUser);
