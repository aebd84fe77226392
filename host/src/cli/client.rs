//! The admin API's client behind the CLI's service commands (`deploy`, `ls`, `show`,
//! `rm`, `scale`, `rollback`, `canary`, `logs`, `external`, `events`, `tokens`,
//! `secrets`, `top`, …).

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::convert::Infallible;
use std::path::{Path, PathBuf};

use super::AdminArgs;
use crate::admin::TOKEN_FILE;
use shoal_api::ErrorBody;
use shoal_api::events::EventsView;
use shoal_api::services as api;
use shoal_api::{access, external, logs, secrets};

type Body = BoxBody<Bytes, Infallible>;

/// Upload chunk size; also the progress bar's granularity.
const CHUNK: usize = 64 * 1024;

/// The admin API's client: built once per command, from how to reach the host.
pub struct AdminClient {
    base: String,
    token: String,
    transport: Transport,
}

/// How requests reach the admin API.
enum Transport {
    /// `http://`: a pooled client.
    Plain(Box<Client<HttpConnector, Body>>),
    /// `https://`: a TLS connection per request, verified against these roots.
    Tls(tokio_rustls::TlsConnector),
}

/// The roots to verify an admin API's certificate against.
fn tls_connector(ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector> {
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        crate::trust::client_config(ca_file)?,
    )))
}

/// Send `request` over a new TLS connection to its URI's authority.
async fn send_tls(
    connector: &tokio_rustls::TlsConnector,
    mut request: Request<Body>,
) -> Result<http::Response<hyper::body::Incoming>> {
    let authority = request
        .uri()
        .authority()
        .context("the admin URL has no host")?
        .clone();
    // One connection per request: the request line carries the path, `Host` the
    // authority.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .context("invalid admin URL path")?;
    *request.uri_mut() = path;
    request.headers_mut().insert(
        header::HOST,
        header::HeaderValue::from_str(authority.as_str()).context("invalid admin URL host")?,
    );
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("cannot reach the admin API at {authority}"))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .with_context(|| format!("`{host}` is not a host name or address"))?;
    let tls = connector
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS with the admin API at {authority} failed"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    Ok(sender.send_request(request).await?)
}

impl AdminClient {
    /// A client of the admin API `args` say how to reach.
    pub fn new(args: &AdminArgs) -> Result<Self> {
        let token = match &args.token {
            Some(token) => token.clone(),
            None => {
                let dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
                let path = dir.join(TOKEN_FILE);
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no admin token: pass --token or SHOAL_ADMIN_TOKEN, or --data-dir of \
                             a local host (tried {})",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        let base = args.url.trim_end_matches('/').to_owned();
        let transport = if base.starts_with("https://") {
            Transport::Tls(tls_connector(args.ca_file.as_deref())?)
        } else {
            Transport::Plain(Box::new(Client::builder(TokioExecutor::new()).build_http()))
        };
        Ok(Self {
            base,
            token,
            transport,
        })
    }

    /// Send a request; its status and body when it succeeded, the admin API's own
    /// reason when it did not.
    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Body,
    ) -> Result<(StatusCode, Bytes)> {
        let content_type = content_type.map(|value| (header::CONTENT_TYPE.as_str(), value));
        let response = self
            .response(method, path, content_type.as_slice(), body)
            .await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{status}: {}", error_message(&bytes));
        }
        Ok((status, bytes))
    }

    /// Send a request with `headers` and return the answer with its body unread.
    async fn response(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(body)
            .with_context(|| format!("invalid URL {url}"))?;
        let response = match &self.transport {
            Transport::Plain(client) => client
                .request(request)
                .await
                .with_context(|| format!("cannot reach the admin API at {}", self.base))?,
            Transport::Tls(connector) => send_tls(connector, request).await?,
        };
        Ok(response)
    }
}

impl AdminClient {
    /// `method path` with a JSON `body` (or none), its answer read as `T`.
    pub(crate) async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<T> {
        let (content_type, body) = match body {
            Some(body) => (
                Some("application/json"),
                Full::new(Bytes::from(serde_json::to_vec(body)?)).boxed(),
            ),
            None => (None, empty()),
        };
        let (_, bytes) = self.send(method, path, content_type, body).await?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("the admin API's answer to {path} is not what this CLI knows"))
    }

    /// `GET /v1/services`.
    pub async fn services(&self) -> Result<api::ServiceList> {
        self.call(Method::GET, "/v1/services", None::<&()>).await
    }

    /// `GET /v1/services/{name}`.
    pub async fn service(&self, name: &str) -> Result<api::Service> {
        self.call(Method::GET, &format!("/v1/services/{name}"), None::<&()>)
            .await
    }

    /// `PUT /v1/services/{name}/scale`.
    pub async fn scale(&self, name: &str, request: &api::ScaleRequest) -> Result<api::Service> {
        self.call(
            Method::PUT,
            &format!("/v1/services/{name}/scale"),
            Some(request),
        )
        .await
    }

    /// `POST /v1/services/{name}/rollback`.
    pub async fn rollback(
        &self,
        name: &str,
        request: &api::RollbackRequest,
    ) -> Result<api::Service> {
        self.call(
            Method::POST,
            &format!("/v1/services/{name}/rollback"),
            Some(request),
        )
        .await
    }

    /// `PUT /v1/services/{name}/canary`.
    pub async fn canary_weight(&self, name: &str, weight: u8) -> Result<api::Service> {
        self.call(
            Method::PUT,
            &format!("/v1/services/{name}/canary"),
            Some(&api::CanaryWeightRequest { weight }),
        )
        .await
    }

    /// `POST /v1/services/{name}/canary/promote`.
    pub async fn promote_canary(&self, name: &str) -> Result<api::Service> {
        self.call(
            Method::POST,
            &format!("/v1/services/{name}/canary/promote"),
            None::<&()>,
        )
        .await
    }

    /// `DELETE /v1/services/{name}/canary`.
    pub async fn abort_canary(&self, name: &str) -> Result<api::Service> {
        self.call(
            Method::DELETE,
            &format!("/v1/services/{name}/canary"),
            None::<&()>,
        )
        .await
    }

    /// `GET /v1/events`.
    pub async fn events(&self) -> Result<EventsView> {
        self.call(Method::GET, "/v1/events", None::<&()>).await
    }
}

/// The reason in an error answer's body ([`ErrorBody`]), or its text.
fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(error) => error.error,
        Err(_) if body.is_empty() => "no details".to_owned(),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    }
}

/// What `shoal logs` asks for.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Keep printing new lines.
    pub follow: bool,
    /// Only this level and above.
    pub level: Option<String>,
    /// Only this request's lines.
    pub request_id: Option<String>,
    /// Kept lines to print first.
    pub tail: usize,
}

fn print_log_line(line: &logs::LogLine) {
    println!(
        "{} {:<5} [{}] {} {}{}{}",
        line.at,
        line.level.to_uppercase(),
        line.version,
        line.request_id,
        line.message,
        if line.fields.is_empty() { "" } else { " " },
        line.fields
    );
}

/// Print a service's recent log lines, and with `follow`, every new one until the
/// service is removed or the host stops.
pub async fn logs(client: &AdminClient, name: &str, options: &LogOptions) -> Result<()> {
    read_logs(client, name, options, &mut |line| {
        print_log_line(line);
        std::io::Write::flush(&mut std::io::stdout()).ok();
    })
    .await
}

/// A service's recent log lines, and with `follow`, every new one until the service
/// is removed or the host stops, each handed to `on_line`.
pub(super) async fn read_logs(
    client: &AdminClient,
    name: &str,
    options: &LogOptions,
    on_line: &mut (dyn FnMut(&logs::LogLine) + Send),
) -> Result<()> {
    let mut query = format!("tail={}", options.tail);
    if options.follow {
        query.push_str("&follow=1");
    }
    for (key, value) in [
        ("level", &options.level),
        ("request_id", &options.request_id),
    ] {
        if let Some(value) = value {
            query.push_str(&format!(
                "&{key}={}",
                percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
            ));
        }
    }
    let path = format!("/v1/services/{name}/logs?{query}");
    if !options.follow {
        let lines: logs::LogLines = client.call(Method::GET, &path, None::<&()>).await?;
        lines.lines.iter().for_each(on_line);
        return Ok(());
    }
    let response = client.response(Method::GET, &path, &[], empty()).await?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let bytes = body.collect().await?.to_bytes();

        bail!("{status}: {}", error_message(&bytes));
    }
    // Server-sent events: `event:` and `data:` lines, a blank line ends one.
    let mut pending = Vec::new();
    let mut event = String::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:") {
                match event.as_str() {
                    "dropped" => {
                        let dropped: logs::Dropped = serde_json::from_str(data.trim())
                            .context("a `dropped` event this CLI does not know")?;
                        eprintln!(
                            "… {} lines were dropped (the reader fell behind)",
                            dropped.lines
                        );
                    }
                    _ => {
                        let line: logs::LogLine = serde_json::from_str(data.trim())
                            .context("a log line this CLI does not know")?;
                        on_line(&line);
                    }
                }
            } else if line.is_empty() {
                event.clear();
            }
        }
    }
    Ok(())
}

/// Deploy as a canary.
#[derive(Debug, Clone, Copy)]
pub struct CanaryOptions {
    /// Percentage of traffic.
    pub weight: u8,
    /// Automatic rollback threshold.
    pub max_error_rate: Option<f64>,
}

/// Deploy the component at `path` (building it first when `path` is a directory).
pub async fn deploy(
    client: &AdminClient,
    path: &Path,
    name: Option<String>,
    manifest: Option<&Path>,
    canary: Option<CanaryOptions>,
) -> Result<()> {
    let wasm = if path.is_dir() {
        let dir = path.to_path_buf();
        tokio::task::spawn_blocking(move || super::build::build(&dir)).await??
    } else {
        path.to_path_buf()
    };
    let name = match name {
        Some(name) => name,
        None => super::build::name_from_path(if path.is_dir() { path } else { &wasm })?,
    };
    let component = tokio::fs::read(&wasm)
        .await
        .with_context(|| format!("reading {}", wasm.display()))?;
    // A service directory's own manifest, unless another one is named.
    let own_manifest = path.join("shoal.toml");
    let manifest = match manifest {
        Some(manifest) => Some(manifest),
        None if path.is_dir() && own_manifest.is_file() => Some(own_manifest.as_path()),
        None => None,
    };
    let (content_type, payload) = match manifest {
        Some(manifest) => {
            let text = tokio::fs::read_to_string(manifest)
                .await
                .with_context(|| format!("reading {}", manifest.display()))?;
            let boundary = format!("shoal-{:032x}", rand::random::<u128>());
            (
                format!("multipart/form-data; boundary={boundary}"),
                multipart(&boundary, &component, &text),
            )
        }
        None => ("application/wasm".to_owned(), component),
    };

    let progress = indicatif::ProgressBar::new(payload.len() as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("uploading {msg} [{bar:30}] {bytes}/{total_bytes}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    progress.set_message(name.clone());
    let chunks: Vec<Bytes> = Bytes::from(payload)
        .chunks(CHUNK)
        .map(Bytes::copy_from_slice)
        .collect();
    let bar = progress.clone();
    let stream = futures::StreamExt::map(futures::stream::iter(chunks), move |chunk| {
        bar.inc(chunk.len() as u64);
        Ok::<_, Infallible>(Frame::data(chunk))
    });
    let body = http_body_util::BodyExt::boxed(StreamBody::new(stream));
    let mut path = format!("/v1/services/{name}");
    if let Some(canary) = canary {
        path.push_str(&format!("?canary={}", canary.weight));
        if let Some(rate) = canary.max_error_rate {
            path.push_str(&format!("&max_error_rate={rate}"));
        }
    }
    let result = client
        .send(Method::PUT, &path, Some(&content_type), body)
        .await;
    progress.finish_and_clear();
    let (status, bytes) = result?;
    let service: api::Service = serde_json::from_slice(&bytes)
        .context("the admin API's answer to the deploy is not what this CLI knows")?;
    let Some(service) = service.running() else {
        bail!("{name} was deployed but does not run");
    };
    if let Some(canary) = canary {
        println!(
            "canary {} of {} takes {}% of the traffic (stable: {})",
            service.canary.as_ref().map_or("?", |c| c.version.as_str()),
            name,
            canary.weight,
            service.version,
        );
        return Ok(());
    }
    let verb = if status == StatusCode::CREATED {
        "deployed"
    } else {
        "updated"
    };
    println!(
        "{verb} {} version {} (sha256 {}) at route {}",
        service.name,
        service.version,
        &service.digest[..service.digest.len().min(12)],
        service.route,
    );
    Ok(())
}

/// Deploy `component` as `name` with `manifest` (TOML), quietly: the service as the
/// host answers. For `shoal dev`, which prints its own progress.
pub(super) async fn deploy_quietly(
    client: &AdminClient,
    name: &str,
    component: &[u8],
    manifest: Option<&str>,
) -> Result<api::Service> {
    let (content_type, payload) = match manifest {
        Some(text) => {
            let boundary = format!("shoal-{:032x}", rand::random::<u128>());
            (
                format!("multipart/form-data; boundary={boundary}"),
                multipart(&boundary, component, text),
            )
        }
        None => ("application/wasm".to_owned(), component.to_vec()),
    };
    let body = Full::new(Bytes::from(payload)).boxed();
    let (_, bytes) = client
        .send(
            Method::PUT,
            &format!("/v1/services/{name}"),
            Some(&content_type),
            body,
        )
        .await?;
    serde_json::from_slice(&bytes)
        .context("the admin API's answer to the deploy is not what this CLI knows")
}

/// `name`'s recording `id`, whole.
async fn fetch_recording(
    client: &AdminClient,
    name: &str,
    id: &str,
) -> Result<shoal_api::recordings::Recording> {
    client
        .call(
            Method::GET,
            &format!("/v1/services/{name}/recordings/{id}"),
            None::<&()>,
        )
        .await
}

/// Print `name`'s recordings as a table, or one (`id`) whole as JSON.
pub async fn recordings(client: &AdminClient, name: &str, id: Option<&str>) -> Result<()> {
    use shoal_api::recordings as rec;
    if let Some(id) = id {
        let recording = fetch_recording(client, name, id).await?;
        println!("{}", serde_json::to_string_pretty(&recording)?);
        return Ok(());
    }
    let listing: rec::Listing = client
        .call(
            Method::GET,
            &format!("/v1/services/{name}/recordings"),
            None::<&()>,
        )
        .await?;
    println!(
        "{name} records: {} ({} kept, {} dropped to stay within bounds)",
        listing.record,
        listing.recordings.len(),
        listing.dropped
    );
    if listing.recordings.is_empty() {
        return Ok(());
    }
    println!(
        "{:<26} {:<24} {:<10} {:>6} {:<20} REQUEST",
        "ID", "AT", "VERSION", "STATUS", "FAULT"
    );
    for summary in &listing.recordings {
        println!(
            "{:<26} {:<24} {:<10} {:>6} {:<20} {} {} ({})",
            summary.id,
            summary.at,
            summary.version,
            summary.status,
            summary
                .fault
                .as_deref()
                .map_or("-", |fault| fault.split(':').next().unwrap_or(fault)),
            summary.method,
            summary.path,
            summary.request_id
        );
    }
    Ok(())
}

/// What `shoal replay` runs a recording against.
pub enum ReplayTarget {
    /// The recorded version.
    Recorded,
    /// Another version of the service.
    Version(String),
    /// A component's bytes.
    Component(Vec<u8>),
    /// The service itself, for real.
    Live,
}

/// The service that keeps recording `id` (the first whose listing has it).
pub async fn service_of_recording(client: &AdminClient, id: &str) -> Result<String> {
    use shoal_api::recordings as rec;
    for service in client.services().await?.services {
        let name = service.name().to_owned();
        let path = format!("/v1/services/{name}/recordings");
        // Services this token may not read recordings of are skipped.
        if let Ok(listing) = client
            .call::<rec::Listing>(Method::GET, &path, None::<&()>)
            .await
            && listing.recordings.iter().any(|summary| summary.id == id)
        {
            return Ok(name);
        }
    }
    bail!("no service whose recordings this token may read keeps a recording `{id}`")
}

/// Replay `name`'s recording `id` against `target`, and print it beside the recording.
pub async fn replay(
    client: &AdminClient,
    name: &str,
    id: &str,
    target: ReplayTarget,
) -> Result<()> {
    use shoal_api::recordings as rec;
    let path = format!("/v1/services/{name}/recordings/{id}/replay");
    let (path, body) = match target {
        ReplayTarget::Recorded => (path, None),
        ReplayTarget::Version(version) => {
            (format!("{path}?version={}", query_value(&version)), None)
        }
        ReplayTarget::Component(bytes) => (path, Some(bytes)),
        ReplayTarget::Live => return replay_live(client, name, id).await,
    };
    let (content_type, body) = match body {
        Some(bytes) => (
            Some("application/wasm"),
            Full::new(Bytes::from(bytes)).boxed(),
        ),
        None => (None, empty()),
    };
    let (_, bytes) = client.send(Method::POST, &path, content_type, body).await?;
    let replay: rec::Replay = serde_json::from_slice(&bytes)
        .context("the admin API's answer to the replay is not what this CLI knows")?;
    print!("{}", replay_report(name, &replay));
    Ok(())
}

/// `text` made safe for a query string value.
fn query_value(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A replay as a person reads it: both outcomes, the body's diff, where it diverged.
pub fn replay_report(name: &str, replay: &shoal_api::recordings::Replay) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let (recorded, replayed) = (&replay.recorded, &replay.replayed);
    let _ = writeln!(
        out,
        "replay of {} ({name}) against {}{}",
        replay.recording,
        replay.ran,
        if replay.same_version {
            " (the recorded version)"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "{:<10} {:<20} REPLAYED", "", "RECORDED");
    let _ = writeln!(
        out,
        "{:<10} {:<20} {}",
        "status", recorded.status, replayed.status
    );
    let fault = |fault: &Option<String>| fault.clone().unwrap_or_else(|| "none".to_owned());
    let _ = writeln!(out, "fault, recorded: {}", fault(&recorded.fault));
    let _ = writeln!(out, "fault, replayed: {}", fault(&replayed.fault));
    let headers = |outcome: &shoal_api::recordings::Outcome| {
        let mut lines: Vec<String> = outcome
            .headers
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "date" | "x-request-id" | "traceparent"))
            .map(|(name, value)| format!("{name}: {value}\n"))
            .collect();
        lines.sort();
        lines.concat()
    };
    // Two failures are the host's answers, which differ only by request id.
    let both_failed = recorded.fault.is_some() && replayed.fault.is_some();
    let header_diff = if both_failed {
        String::new()
    } else {
        text_diff(&headers(recorded), &headers(replayed))
    };
    if !header_diff.is_empty() {
        let _ = writeln!(out, "headers:\n{header_diff}");
    }
    let body = |outcome: &shoal_api::recordings::Outcome| match &outcome.body {
        shoal_api::recordings::Body::Text(text) => text.clone(),
        shoal_api::recordings::Body::Base64(text) => format!("(base64) {text}"),
    };
    let body_diff = text_diff(&body(recorded), &body(replayed));
    if both_failed {
        let _ = writeln!(out, "body: the host's answer to the fault");
    } else if body_diff.is_empty() {
        let _ = writeln!(out, "body: the same ({} bytes)", body(replayed).len());
    } else {
        let _ = writeln!(out, "body:\n{body_diff}");
    }
    match &replay.divergence {
        Some(divergence) => {
            let _ = writeln!(
                out,
                "diverged at call {}: the code asked for `{}`; the recording has {}",
                divergence.call,
                divergence.asked,
                divergence
                    .recorded
                    .as_deref()
                    .map_or("no more calls".to_owned(), |recorded| format!(
                        "`{recorded}`"
                    ))
            );
        }
        None => {
            let _ = writeln!(out, "every call the code made was in the recording");
        }
    }
    let _ = writeln!(
        out,
        "recorded calls left unasked: {}; clock readings past the recording: {}; random bytes past it: {}",
        replay.unused_calls, replay.extra_clock_reads, replay.extra_random_bytes
    );
    if replay.same_version {
        let reproduced = recorded.status == replayed.status && recorded.fault == replayed.fault;
        let _ = writeln!(
            out,
            "{}",
            if reproduced {
                "reproduced: the recorded version answers as it did"
            } else {
                "NOT reproduced: the recorded version answers otherwise (the recording misses something it read)"
            }
        );
    }
    for note in &replay.notes {
        let _ = writeln!(out, "note: {note}");
    }
    if !replay.logs.is_empty() {
        let _ = writeln!(out, "logs of the replay:");
        for line in &replay.logs {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// A line diff of `before` and `after` (`-` and `+` lines; empty when equal).
fn text_diff(before: &str, after: &str) -> String {
    if before == after {
        return String::new();
    }
    let diff = similar::TextDiff::from_lines(before, after);
    let mut out = String::new();
    for change in diff.iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => "-",
            similar::ChangeTag::Insert => "+",
            similar::ChangeTag::Equal => " ",
        };
        out.push_str(sign);
        out.push(' ');
        out.push_str(change.value());
        if change.missing_newline() {
            out.push('\n');
        }
    }
    out
}

/// Methods `--live` re-sends: safe ones, which change nothing. (A recorded `PUT` or
/// `DELETE` is idempotent, but sending it again would write what the recording
/// holds, masks included, over what is there now.)
const IDEMPOTENT: &[&str] = &["GET", "HEAD", "OPTIONS"];

/// Send recording `id` of `name` again, for real, through the admin API's call route.
async fn replay_live(client: &AdminClient, name: &str, id: &str) -> Result<()> {
    let recording = fetch_recording(client, name, id).await?;
    let request = &recording.request;
    if !IDEMPOTENT.contains(&request.method.as_str()) {
        bail!(
            "a {} request is not idempotent: --live re-sends only {} requests (replay it in \
             the sandbox instead)",
            request.method,
            IDEMPOTENT.join(", ")
        );
    }
    let masked = request.path.contains(crate::policy::redact::MASK)
        || crate::recording::bytes_of(&request.body).is_some_and(|body| {
            String::from_utf8_lossy(&body).contains(crate::policy::redact::MASK)
        });
    if masked {
        bail!(
            "the recorded request has masked values (a secret was in it): it cannot be sent again as it was"
        );
    }
    if request.truncated {
        bail!(
            "the recorded body was cut at the recording's limit: it cannot be sent again as it was"
        );
    }
    let body = Bytes::from(
        crate::recording::bytes_of(&request.body).context("the recorded body is not base64")?,
    );
    // Headers the host sets or masked, and the body's framing, are not sent again.
    let headers: Vec<(&str, &str)> = request
        .headers
        .iter()
        .filter(|(name, value)| {
            value != crate::policy::redact::MASK
                && !matches!(
                    name.as_str(),
                    "host"
                        | "content-length"
                        | "transfer-encoding"
                        | "connection"
                        | "authorization"
                )
                && !name.starts_with("x-shoal-")
        })
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let method = Method::from_bytes(request.method.as_bytes()).context("the recorded method")?;
    let path = format!("/v1/services/{name}/call{}", request.path);
    let response = client
        .response(method, &path, &headers, Full::new(body).boxed())
        .await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    println!(
        "sent {} {} again, for real: {status} (recorded: {})",
        request.method, request.path, recording.response.status
    );
    println!("{}", String::from_utf8_lossy(&bytes));
    Ok(())
}

/// Set which of `name`'s requests are recorded (`None`: as its manifest says).
pub async fn record(client: &AdminClient, name: &str, record: Option<String>) -> Result<()> {
    use shoal_api::recordings as rec;
    let now: rec::RecordingMode = client
        .call(
            Method::PUT,
            &format!("/v1/services/{name}/recording"),
            Some(&rec::RecordingMode { record }),
        )
        .await?;
    println!("{name} records: {}", now.record.as_deref().unwrap_or("off"));
    Ok(())
}

/// Print the services of a host as a table.
pub async fn list(client: &AdminClient) -> Result<()> {
    let list = client.services().await?;
    println!(
        "{:<24} {:<20} {:<14} {:<24} {:<9} {:<24} {:<24} HOSTS",
        "NAME", "VERSION", "DIGEST", "ROUTE", "STATE", "CANARY", "DEPLOYED"
    );
    for service in &list.services {
        let placements: &[api::Placement] = match service {
            api::Service::Running(service) => &service.placements,
            api::Service::Elsewhere(service) => &service.placements,
            api::Service::Failed(_) => &[],
        };
        let (version, digest, route, state, canary, deployed_at) = match service {
            api::Service::Running(service) => (
                &service.version,
                &service.digest,
                &service.route,
                "running",
                service.canary.as_ref().map_or_else(
                    || "-".to_owned(),
                    |canary| format!("{} ({}%)", canary.version, canary.weight),
                ),
                &service.deployed_at,
            ),
            api::Service::Failed(service) => (
                &service.version,
                &service.digest,
                &service.route,
                "failed",
                "-".to_owned(),
                &service.deployed_at,
            ),
            api::Service::Elsewhere(service) => (
                &service.version,
                &service.digest,
                &service.route,
                "elsewhere",
                match (&service.canary, service.canary_weight) {
                    (Some(canary), Some(weight)) => format!("{} ({weight}%)", canary.version),
                    _ => "-".to_owned(),
                },
                &service.deployed_at,
            ),
        };
        println!(
            "{:<24} {:<20} {:<14} {:<24} {:<9} {:<24} {:<24} {}",
            service.name(),
            version,
            &digest[..digest.len().min(12)],
            route,
            state,
            canary,
            deployed_at,
            placed_on(placements),
        );
    }
    Ok(())
}

/// Print one service: a summary for people, or its JSON for scripts.
pub async fn show(client: &AdminClient, name: &str, as_json: bool) -> Result<()> {
    let service = client.service(name).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&service)?);
        return Ok(());
    }
    let recent = if service.running().is_some() {
        let path = format!("/v1/services/{name}/logs?level=warn&tail=5");
        let recent: logs::LogLines = client.call(Method::GET, &path, None::<&()>).await?;
        recent.lines
    } else {
        Vec::new()
    };
    print!("{}", super::people::render_service(&service, &recent));
    Ok(())
}

/// Show services ordered by CPU, requests or errors, refreshing every `interval`;
/// `iterations` samples (0: until interrupted).
pub async fn top(
    client: &AdminClient,
    order: super::people::TopOrder,
    interval: std::time::Duration,
    iterations: u32,
) -> Result<()> {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut before: Option<(std::time::Instant, Vec<super::people::Counters>)> = None;
    let mut sample = 0;
    loop {
        let list = client.services().await?;
        let now = (std::time::Instant::now(), super::people::counters(&list));
        let table = super::people::render_top(
            before.as_ref().map(|(_, counters)| counters.as_slice()),
            &now.1,
            before
                .as_ref()
                .map_or(std::time::Duration::ZERO, |(at, _)| now.0 - *at),
            order,
        );
        if terminal {
            // Clear the screen and go home, like top.
            print!("\x1b[2J\x1b[H");
        }
        println!("{table}");
        std::io::Write::flush(&mut std::io::stdout()).ok();
        before = Some(now);
        sample += 1;
        if iterations != 0 && sample >= iterations {
            return Ok(());
        }
        tokio::time::sleep(interval).await;
    }
}

/// Register (or replace) an external service.
pub async fn external_add(
    client: &AdminClient,
    name: &str,
    endpoints: &[String],
    health_path: Option<&str>,
) -> Result<()> {
    let spec = external::ExternalSpec {
        endpoints: endpoints.to_vec(),
        health_check: health_path.map(|path| external::HealthCheck {
            path: Some(path.to_owned()),
            interval_ms: None,
            timeout_ms: None,
            unhealthy_threshold: None,
            healthy_threshold: None,
        }),
        version: None,
        tags: Vec::new(),
    };
    let _: external::External = client
        .call(Method::PUT, &format!("/v1/external/{name}"), Some(&spec))
        .await?;
    println!("registered external service {name}");
    Ok(())
}

/// List external services with their endpoints' health.
pub async fn external_list(client: &AdminClient) -> Result<()> {
    let list: external::ExternalList = client
        .call(Method::GET, "/v1/external", None::<&()>)
        .await?;
    println!("{:<24} {:<48} HEALTH CHECK", "NAME", "ENDPOINTS");
    for external in &list.external {
        let check = external
            .spec
            .health_check
            .as_ref()
            .and_then(|check| check.path.as_deref())
            .unwrap_or("-");
        println!(
            "{:<24} {:<48} {check}",
            external.name,
            external.spec.endpoints.join(",")
        );
    }
    Ok(())
}

/// Remove an external service.
pub async fn external_remove(client: &AdminClient, name: &str) -> Result<()> {
    client
        .send(
            Method::DELETE,
            &format!("/v1/external/{name}"),
            None,
            empty(),
        )
        .await?;
    println!("removed external service {name}");
    Ok(())
}

/// Change concurrency and queue.
pub async fn scale(
    client: &AdminClient,
    name: &str,
    max_concurrency: Option<u32>,
    replicas: Option<u32>,
    queue: Option<u32>,
) -> Result<()> {
    let request = api::ScaleRequest {
        max_concurrency,
        replicas,
        queue,
    };
    let service = client.scale(name, &request).await?;
    if let api::Service::Elsewhere(service) = &service {
        println!(
            "{name}: {} replicas, on {}",
            service.replicas,
            placed_on(&service.placements)
        );
        return Ok(());
    }
    let Some(service) = service.running() else {
        bail!("{name} does not run");
    };
    if let Some(replicas) = service.replicas {
        println!(
            "{name}: {replicas} replicas, on {}",
            placed_on(&service.placements)
        );
    }
    println!(
        "{name}: max concurrency {}, queue {} ({} running, {} queued)",
        service.limits.max_concurrency,
        service.limits.queue,
        service.load.in_flight,
        service.load.queued
    );
    Ok(())
}

/// The hosts of placements, for people: `a (up), b (draining)`, or `-`.
fn placed_on(placements: &[api::Placement]) -> String {
    if placements.is_empty() {
        return "-".to_owned();
    }
    placements
        .iter()
        .map(|p| format!("{} ({})", p.host, p.state))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `shoal hosts`: the hosts of the cluster.
pub async fn hosts(client: &AdminClient) -> Result<()> {
    let cluster: shoal_api::cluster::Cluster =
        client.call(Method::GET, "/v1/cluster", None::<&()>).await?;
    println!(
        "{:<22} {:<22} {:<9} {:<7} {:<16} {:<20} SERVICES",
        "ID", "ADDRESS", "STATE", "LEADER", "MEMORY USED/MiB", "LABELS"
    );
    for host in &cluster.hosts {
        let labels: Vec<String> = host
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "{:<22} {:<22} {:<9} {:<7} {:<16} {:<20} {}",
            host.id,
            host.address,
            host.state,
            if cluster.leader.as_deref() == Some(host.id.as_str()) {
                "yes"
            } else {
                ""
            },
            format!("{}/{}", host.memory_used_mb, host.memory_budget_mb),
            if labels.is_empty() {
                "-".to_owned()
            } else {
                labels.join(",")
            },
            if host.services.is_empty() {
                "-".to_owned()
            } else {
                host.services.join(",")
            },
        );
    }
    Ok(())
}

/// `shoal host drain|undrain ID`.
pub async fn drain(client: &AdminClient, id: &str, draining: bool) -> Result<()> {
    let method = if draining {
        Method::POST
    } else {
        Method::DELETE
    };
    client
        .send(method, &format!("/v1/hosts/{id}/drain"), None, empty())
        .await?;
    if draining {
        println!("draining {id}: its replicas move once their replacements serve");
    } else {
        println!("{id} takes replicas again");
    }
    Ok(())
}

/// Roll back to the previous or a given version.
pub async fn rollback(client: &AdminClient, name: &str, to: Option<String>) -> Result<()> {
    let service = client
        .rollback(name, &api::RollbackRequest { version: to })
        .await?;
    let version = match &service {
        api::Service::Running(service) => &service.version,
        api::Service::Failed(service) => &service.version,
        api::Service::Elsewhere(service) => &service.version,
    };
    println!("{name} is back on version {version}");
    Ok(())
}

/// Change, promote or drop a canary.
pub async fn canary(
    client: &AdminClient,
    name: &str,
    weight: Option<u8>,
    promote: bool,
    abort: bool,
) -> Result<()> {
    let service = match (weight, promote, abort) {
        (Some(weight), false, false) => client.canary_weight(name, weight).await?,
        (None, true, false) => client.promote_canary(name).await?,
        (None, false, true) => client.abort_canary(name).await?,
        _ => bail!("say one of --weight N, --promote or --abort"),
    };
    let Some(service) = service.running() else {
        bail!("{name} does not run");
    };
    match &service.canary {
        Some(canary) => println!(
            "{name}: canary {} takes {}% (stable: {})",
            canary.version, canary.weight, service.version
        ),
        None => println!(
            "{name}: no canary; all traffic on version {}",
            service.version
        ),
    }
    Ok(())
}

/// Print topics, subscriptions, waiting deliveries and dead letters.
pub async fn events(client: &AdminClient) -> Result<()> {
    let events = client.events().await?;
    println!("deliveries waiting: {}", events.pending);
    println!(
        "\nSUBSCRIBER               TOPIC                    ROUTE                    ATTEMPTS"
    );
    for subscription in &events.subscriptions {
        println!(
            "{:<24} {:<24} {:<24} {}",
            subscription.service, subscription.topic, subscription.route, subscription.max_attempts
        );
    }
    println!("\ndead letters: {}", events.dead_letters.len());
    for letter in &events.dead_letters {
        println!(
            "  {} to {} ({}, {} attempts): {}",
            letter.event_id, letter.subscriber, letter.topic, letter.attempts, letter.reason
        );
    }
    Ok(())
}

/// Replay (or drop) one dead letter.
pub async fn dead_letter(
    client: &AdminClient,
    replay: bool,
    subscriber: &str,
    event: &str,
) -> Result<()> {
    let path = format!("/v1/events/dead/{subscriber}/{event}");
    if replay {
        client
            .send(Method::POST, &format!("{path}/replay"), None, empty())
            .await?;
        println!("replaying {event} to {subscriber}");
    } else {
        client.send(Method::DELETE, &path, None, empty()).await?;
        println!("dropped {event} for {subscriber}");
    }
    Ok(())
}

/// Remove a service.
pub async fn remove(client: &AdminClient, name: &str) -> Result<()> {
    client
        .send(
            Method::DELETE,
            &format!("/v1/services/{name}"),
            None,
            empty(),
        )
        .await?;
    println!("removed {name}");
    Ok(())
}

/// `shoal rm --purge`: delete the data of a service that no longer runs.
pub async fn purge_data(client: &AdminClient, name: &str) -> Result<()> {
    client
        .send(
            Method::DELETE,
            &format!("/v1/services/{name}/data"),
            None,
            empty(),
        )
        .await?;
    println!("deleted the data of {name}");
    Ok(())
}

/// `shoal data export NAME`: the snapshot, as JSON on standard output.
pub async fn export_data(client: &AdminClient, name: &str) -> Result<()> {
    let snapshot: shoal_api::data::Snapshot = client
        .call(
            Method::GET,
            &format!("/v1/services/{name}/data"),
            None::<&()>,
        )
        .await?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, &snapshot)?;
    std::io::Write::write_all(&mut out, b"\n")?;
    Ok(())
}

/// `shoal data import NAME`: a snapshot from standard input into an empty store.
pub async fn import_data(client: &AdminClient, name: &str) -> Result<()> {
    let input = tokio::task::spawn_blocking(|| {
        let mut input = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut input).map(|_| input)
    })
    .await??;
    let snapshot: shoal_api::data::Snapshot = serde_json::from_slice(&input)
        .context("standard input is not a snapshot written by `shoal data export`")?;
    let keys = snapshot.entries.len();
    client
        .send(
            Method::PUT,
            &format!("/v1/services/{name}/data"),
            Some("application/json"),
            Full::new(Bytes::from(input)).boxed(),
        )
        .await?;
    println!("imported {keys} keys into {name}");
    Ok(())
}

fn empty() -> Body {
    Full::new(Bytes::new()).boxed()
}

/// `target/.../hello_world.wasm` → `hello-world`.
fn multipart(boundary: &str, component: &[u8], manifest: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(component.len() + manifest.len() + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\
             Content-Type: application/toml\r\n\r\n{manifest}\r\n--{boundary}\r\n\
             Content-Disposition: form-data; name=\"component\"; filename=\"component.wasm\"\r\n\
             Content-Type: application/wasm\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(component);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

fn default_data_dir() -> PathBuf {
    dirs::data_local_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("shoal")
}

/// Create a scoped token and print its secret (shown this once).
pub async fn token_create(
    client: &AdminClient,
    name: &str,
    scope: &str,
    services: &[String],
) -> Result<()> {
    let scope = match scope {
        "read" => access::Scope::Read,
        "deploy" => access::Scope::Deploy,
        "admin" => access::Scope::Admin,
        other => bail!("`{other}` is not a scope: read, deploy or admin"),
    };
    let request = access::NewToken {
        name: name.to_owned(),
        scope,
        services: services.to_vec(),
    };
    let created: access::CreatedToken = client
        .call(Method::POST, "/v1/tokens", Some(&request))
        .await?;
    println!("id:    {}", created.info.id);
    println!("token: {}", created.token);
    println!("(the token is shown only now: keep it)");
    Ok(())
}

/// List tokens (never their secrets).
pub async fn token_list(client: &AdminClient) -> Result<()> {
    let list: access::TokenList = client.call(Method::GET, "/v1/tokens", None::<&()>).await?;
    println!(
        "{:<22} {:<20} {:<7} {:<24} CREATED",
        "ID", "NAME", "SCOPE", "SERVICES"
    );
    for token in &list.tokens {
        let scope = match token.scope {
            access::Scope::Read => "read",
            access::Scope::Deploy => "deploy",
            access::Scope::Admin => "admin",
        };
        println!(
            "{:<22} {:<20} {:<7} {:<24} {}",
            token.id,
            token.name,
            scope,
            patterns(&token.services),
            token.created_at
        );
    }
    Ok(())
}

/// A list of service patterns as one column: `*` when empty (every service).
fn patterns(patterns: &[String]) -> String {
    if patterns.is_empty() {
        "*".to_owned()
    } else {
        patterns.join(",")
    }
}

/// Revoke a token.
pub async fn token_revoke(client: &AdminClient, id: &str) -> Result<()> {
    client
        .send(Method::DELETE, &format!("/v1/tokens/{id}"), None, empty())
        .await?;
    println!("revoked {id}");
    Ok(())
}

/// Set a secret from a file or standard input.
pub async fn secret_set(
    client: &AdminClient,
    name: &str,
    from_file: Option<&std::path::Path>,
    services: &[String],
) -> Result<()> {
    let mut value = match from_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the secret from {}", path.display()))?,
        None => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("reading the secret from standard input")?;
            text
        }
    };
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    let request = secrets::NewSecret {
        value,
        services: services.to_vec(),
    };
    let _: secrets::Secret = client
        .call(Method::PUT, &format!("/v1/secrets/{name}"), Some(&request))
        .await?;
    println!("set secret {name}");
    Ok(())
}

/// List secrets (never their values).
pub async fn secret_list(client: &AdminClient) -> Result<()> {
    let list: secrets::SecretList = client.call(Method::GET, "/v1/secrets", None::<&()>).await?;
    println!("{:<32} {:<6} {:<24} UPDATED", "NAME", "SOURCE", "SERVICES");
    for secret in &list.secrets {
        let source = match secret.source {
            secrets::Source::Api => "api",
            secrets::Source::Env => "env",
            secrets::Source::File => "file",
        };
        println!(
            "{:<32} {:<6} {:<24} {}",
            secret.name,
            source,
            patterns(&secret.services),
            secret.updated_at
        );
    }
    Ok(())
}

/// Remove a secret.
pub async fn secret_remove(client: &AdminClient, name: &str) -> Result<()> {
    client
        .send(
            Method::DELETE,
            &format!("/v1/secrets/{name}"),
            None,
            empty(),
        )
        .await?;
    println!("removed secret {name}");
    Ok(())
}

/// Print the audit log's last `limit` entries, oldest first.
/// `shoal audit verify` against a running host.
pub async fn verify_audit(client: &AdminClient) -> Result<access::AuditVerification> {
    client
        .call(Method::GET, "/v1/audit/verify", None::<&()>)
        .await
}

/// Print what a check of the audit chain found; an error if the chain is broken.
pub fn print_verification(found: &access::AuditVerification) -> Result<()> {
    let since = found.first_at.as_deref().unwrap_or("-");
    let history = if found.rotated_out {
        "older entries rotated out"
    } else {
        "from the first entry"
    };
    println!(
        "{} entries since {since} ({history}), head {}",
        found.entries, found.head
    );
    for problem in &found.problems {
        println!("broken: {problem}");
    }
    if found.intact {
        println!("the chain is intact");
        Ok(())
    } else {
        anyhow::bail!(
            "the audit log's hash chain is broken ({} problems)",
            found.problems.len()
        )
    }
}

pub async fn audit(client: &AdminClient, limit: usize) -> Result<()> {
    let log: access::AuditLog = client
        .call(
            Method::GET,
            &format!("/v1/audit?limit={limit}"),
            None::<&()>,
        )
        .await?;
    for entry in &log.entries {
        let outcome = match entry.outcome {
            access::Outcome::Started => "started",
            access::Outcome::Ok => "ok",
            access::Outcome::Refused => "refused",
            access::Outcome::Failed => "failed",
        };
        let mut line = format!(
            "{} {:<22} {:<16} {:<20} {:<8} {}",
            entry.at,
            entry.token_id.as_deref().unwrap_or("-"),
            entry.action,
            entry.target.as_deref().unwrap_or("-"),
            outcome,
            entry
                .status
                .map_or_else(|| "-".to_owned(), |status| status.to_string())
        );
        if let Some(digest) = &entry.digest {
            line.push_str(&format!(" sha256:{}", &digest[..digest.len().min(12)]));
        }
        if let Some(reason) = &entry.reason {
            line.push_str(&format!(" ({reason})"));
        }
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_paths() {
        assert_eq!(
            crate::cli::build::name_from_path(Path::new("target/x/hello_world.wasm"))
                .expect("name"),
            "hello-world"
        );
        assert_eq!(
            crate::cli::build::name_from_path(Path::new("guests/hello")).expect("name"),
            "hello"
        );
    }
}
