//! A recorded request replayed against a version of its service (or an uploaded
//! component), in a sandbox: every value the code receives from outside comes from
//! the recording, nothing it does leaves the sandbox (its store is sealed, its calls,
//! events and outgoing requests are answered from the recording, its logs are the
//! replay's own), and the new answer is shown beside the recorded one.

use bytes::Bytes;
use http_body_util::BodyExt as _;
use parking_lot::Mutex;
use shoal_api::recordings::{Outcome, Replay};
use std::sync::Arc;
use thiserror::Error;

use super::{DeploymentSpec, Services};
use crate::capabilities::ServiceContext;
use crate::data_dir::VersionRecord;
use crate::deadline::Deadline;
use crate::protocol::RequestId;
use crate::recording::journal::Journal;
use crate::recording::{Body, MAX_BODY_BYTES, Recording};
use crate::runtime::LoadError;
use crate::runtime::replay::ReplayRun;
use crate::telemetry::guest_logs::ServiceLogs;

/// Which code a replay runs.
#[derive(Debug, Clone)]
pub enum ReplayTarget {
    /// The version that served the recorded request.
    Recorded,
    /// A version of the service this host keeps (serving, canary, or in its history).
    Version(String),
    /// A component uploaded for the replay only, run with the recorded version's
    /// manifest.
    Component(Bytes),
}

/// Why a replay could not run (its outcome, a fault included, is a [`Replay`]).
#[derive(Debug, Error)]
pub enum ReplayError {
    /// No such service here (the client's mistake).
    #[error("no service named `{0}` runs here")]
    NoService(String),
    /// No such recording (the client's, or it was dropped).
    #[error("`{service}` keeps no recording `{id}` (the oldest are dropped)")]
    NoRecording {
        /// The service.
        service: String,
        /// The recording asked for.
        id: String,
    },
    /// The version asked for is not kept here.
    #[error(
        "`{service}` has no version `{version}` on this host (its serving version, canary \
         and history are kept); replay against another with --to, or a --component"
    )]
    NoVersion {
        /// The service.
        service: String,
        /// The version asked for.
        version: String,
    },
    /// The code cannot be replayed (the client's, unless the host failed).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The host could not read what it keeps.
    #[error("the host cannot read its recordings or components: {0}")]
    Storage(String),
}

impl Services {
    /// Replay `service`'s recording `id` against `target`.
    pub async fn replay(
        &self,
        service: &str,
        id: &str,
        target: ReplayTarget,
    ) -> Result<Replay, ReplayError> {
        let versions = self
            .table
            .versions(service)
            .ok_or_else(|| ReplayError::NoService(service.to_owned()))?;
        let recording = {
            let recordings = self.platform.recordings.clone();
            let (service, id) = (service.to_owned(), id.to_owned());
            tokio::task::spawn_blocking(move || recordings.get(&service, &id))
                .await
                .map_err(|error| ReplayError::Storage(error.to_string()))?
                .map_err(|error| ReplayError::Storage(error.to_string()))?
        }
        .ok_or_else(|| ReplayError::NoRecording {
            service: service.to_owned(),
            id: id.to_owned(),
        })?;
        let kept = |version: &str| -> Option<VersionRecord> {
            std::iter::once(&versions.stable.record)
                .chain(
                    versions
                        .canary
                        .iter()
                        .map(|canary| &canary.deployment.record),
                )
                .chain(&versions.history)
                .find(|record| record.version == version)
                .cloned()
        };
        let no_version = |version: &str| ReplayError::NoVersion {
            service: service.to_owned(),
            version: version.to_owned(),
        };
        let (record, component, ran) = match target {
            ReplayTarget::Recorded | ReplayTarget::Version(_) => {
                let version = match &target {
                    ReplayTarget::Version(version) => version.clone(),
                    _ => recording.version.clone(),
                };
                let record = kept(&version).ok_or_else(|| no_version(&version))?;
                let data_dir = self.data_dir.clone();
                let digest = record.digest.clone();
                let bytes = tokio::task::spawn_blocking(move || data_dir.read_blob(&digest))
                    .await
                    .map_err(|error| ReplayError::Storage(error.to_string()))?
                    .map_err(|error| ReplayError::Storage(format!("{error:#}")))?;
                (record, Bytes::from(bytes), version)
            }
            ReplayTarget::Component(bytes) => {
                // The recorded version's manifest (its config, secrets, limits), or the
                // serving one's when that version is gone.
                let mut record =
                    kept(&recording.version).unwrap_or_else(|| versions.stable.record.clone());
                record.digest = crate::data_dir::sha256_hex(&bytes);
                let ran = format!("component sha256:{}", &record.digest[..12]);
                record.version = ran.clone();
                (record, bytes, ran)
            }
        };
        let same_version = ran == recording.version;
        let spec = DeploymentSpec::resolve(&record, &self.defaults);
        let logs = Arc::new(ServiceLogs::default());
        let context = replay_context(&record, id, logs.clone());
        let redactor = crate::policy::redact::Redactor::process();
        let journal =
            Journal::replaying(recording.received.clone(), &recording.id, redactor.clone());
        let request_id = RequestId::parse(&format!("replay-{id}")).unwrap_or_default();
        let run = ReplayRun {
            service: context,
            memory_bytes: spec.execution.memory_bytes,
            platform: self.platform.clone(),
            request_id,
            timeout: spec.execution.timeout,
            journal: journal.clone(),
        };
        let request = request_of(&recording);
        let outcome = self
            .loader
            .replay(component, &record.digest, run, request)
            .await?;
        let replayed = match outcome {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let kept = Arc::new(Mutex::new(crate::recording::journal::BodyCopy::default()));
                let deadline = Deadline::after(spec.execution.timeout);
                let fault = read_body(body, kept.clone(), deadline).await;
                let kept = kept.lock();
                Outcome {
                    status: parts.status.as_u16(),
                    headers: crate::recording::headers_of(&parts.headers, &redactor),
                    body: crate::recording::body_of(&kept.bytes, &redactor),
                    truncated: kept.truncated,
                    fault,
                }
            }
            Err(failure) => Outcome {
                status: failure.status().as_u16(),
                headers: Vec::new(),
                body: Body::Text(failure.public_message()),
                truncated: false,
                fault: Some(redactor.redact(&failure.to_string()).into_owned()),
            },
        };
        let mut playback = journal.playback();
        if recording.request.truncated {
            playback.notes.push(
                "the request's body was cut at the recording's limit (64 KiB): it was replayed cut"
                    .into(),
            );
        }
        if recording.received.insecure_seed.is_none() {
            playback.notes.push(
                "the recording has no insecure seed (recorded by an older host): hash maps \
                 may iterate in another order"
                    .into(),
            );
        }
        let lines = logs
            .recent(usize::MAX, |_| true)
            .iter()
            .map(|line| {
                if line.fields.is_empty() {
                    format!("{} {}", line.level, line.message)
                } else {
                    format!("{} {} {}", line.level, line.message, line.fields)
                }
            })
            .collect();
        Ok(Replay {
            recording: recording.id.clone(),
            ran,
            same_version,
            recorded: Outcome {
                status: recording.response.status,
                headers: recording.response.headers.clone(),
                body: recording.response.body.clone(),
                truncated: recording.response.truncated,
                fault: recording.fault.clone(),
            },
            replayed,
            divergence: playback.divergence,
            unused_calls: playback.unused_calls,
            extra_clock_reads: playback.extra_clock_reads,
            extra_random_bytes: playback.extra_random_bytes,
            logs: lines,
            notes: playback.notes,
        })
    }
}

/// The replay's own context: the version's name, config and declared secrets; a
/// sealed store; health, meters and logs nobody else sees.
fn replay_context(record: &VersionRecord, id: &str, logs: Arc<ServiceLogs>) -> Arc<ServiceContext> {
    Arc::new(ServiceContext {
        name: record.name.as_str().into(),
        version: record.version.as_str().into(),
        config: record.manifest.config.clone().into(),
        secrets: record.manifest.secrets.clone(),
        instance_id: format!("replay-{id}"),
        outbound: Arc::new(record.manifest.outbound.clone()),
        topics: record.manifest.events.rules(),
        health: Mutex::new(Default::default()),
        log_budget: Default::default(),
        store: Arc::new(crate::store::sealed::Sealed),
        meter: Default::default(),
        logs,
        replay: true,
    })
}

/// The recorded request, as the guest got it (its body as recorded: a body cut at
/// the recording's limit is replayed cut).
fn request_of(recording: &Recording) -> http::Request<http_body_util::Full<Bytes>> {
    let body = Bytes::from(crate::recording::bytes_of(&recording.request.body).unwrap_or_default());
    let mut request = http::Request::new(http_body_util::Full::new(body.clone()));
    *request.method_mut() =
        http::Method::from_bytes(recording.request.method.as_bytes()).unwrap_or_default();
    if let Ok(uri) = recording.request.path.parse() {
        *request.uri_mut() = uri;
    }
    for (name, value) in &recording.request.headers {
        // The body's framing is the replayed body's, not the recorded request's.
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            request.headers_mut().append(name, value);
        }
    }
    request.headers_mut().insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(body.len()),
    );
    request
}

/// Read `body` into `kept` (at most [`MAX_BODY_BYTES`]) until it ends, fails (the
/// fault), or the deadline passes.
async fn read_body(
    mut body: crate::runtime::invoke::GuestBody,
    kept: Arc<Mutex<crate::recording::journal::BodyCopy>>,
    deadline: Deadline,
) -> Option<String> {
    let read = async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        kept.lock().add(data, MAX_BODY_BYTES);
                    }
                }
                Err(error) => return Some(format!("the response body failed: {error}")),
            }
        }
        None
    };
    match tokio::time::timeout_at(deadline.into(), read).await {
        Ok(fault) => fault,
        Err(_) => Some("the replay's response body did not end before its deadline".into()),
    }
}
