//! Secrets the operator provides to services.
//!
//! A service names the secrets it reads in its manifest (`secrets = ["db-password"]`)
//! and reads them through `shoal:platform/secrets`. Values come from three places:
//!
//! - the admin API (`PUT /v1/secrets/{name}`), kept by a [`SecretBackend`]: the
//!   embedded [`sealed::SealedFile`] seals them at rest under a host key;
//! - the host's environment, `SHOAL_SECRET_<NAME>` (`db-password` →
//!   `SHOAL_SECRET_DB_PASSWORD`), read at start;
//! - a directory of files, one per secret (`--secrets-dir`), re-read while running,
//!   the way mounted secret volumes are rotated.
//!
//! The last two are the operator's and cannot be overwritten through the API. A
//! secret set through the API may be limited to service patterns. Every value is
//! handed to the [`Redactor`], which masks it in everything else the host writes.

pub mod sealed;

use anyhow::{Context as _, Result, bail};
use parking_lot::RwLock;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::manifest::validate_secret_name;

/// Where the operator's secrets come from: their part of the `shoal serve` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct SecretsSettings {
    /// Key that seals the secrets set through the admin API (64 hex digits). Created
    /// on first use; keep it apart from the data directory (default: in it).
    #[arg(long, env = "SHOAL_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,

    /// Directory of operator-provided secrets, one file per secret named like it
    /// (a mounted secret volume); re-read while running.
    #[arg(long, env = "SHOAL_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
}
use crate::policy::glob::{glob_matches, validate_pattern};
use crate::policy::redact::{MIN_SECRET_BYTES, Redactor};

/// Longest secret value, in bytes.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// Secrets a host keeps through the API at most.
pub const MAX_SECRETS: usize = 1000;
/// Service patterns one secret may carry at most.
pub const MAX_PATTERNS: usize = 32;
/// Prefix of the environment variables that provide secrets.
pub const ENV_PREFIX: &str = "SHOAL_SECRET_";

/// A secret's value and who may read it. Its `Debug` never shows the value.
#[derive(Clone)]
pub struct Secret {
    /// The value.
    pub value: String,
    /// Services that may read it (glob patterns; empty: any service that names it).
    pub services: Vec<String>,
    /// When it was last set (RFC 3339).
    pub updated_at: String,
}

impl Secret {
    /// A value any service that names it may read, set now.
    fn for_every_service(value: String) -> Self {
        Self {
            value,
            services: Vec::new(),
            updated_at: now(),
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("value", &"[redacted]")
            .field("services", &self.services)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// Where secrets set through the API are kept: the embedded sealed file, or later a
/// distributed store shared by many hosts.
pub trait SecretBackend: Send + Sync {
    /// Its name, for the log.
    fn engine(&self) -> &'static str;
    /// Every secret it keeps, opened.
    fn load(&self) -> Result<BTreeMap<String, Secret>>;
    /// Set one secret, durably, before returning.
    fn put(&self, name: &str, secret: &Secret) -> Result<()>;
    /// Remove one; whether it existed.
    fn remove(&self, name: &str) -> Result<bool>;
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Set through the admin API.
    Api,
    /// The host's environment.
    Env,
    /// A file in the secrets directory.
    File,
}

/// A secret as listed: never its value.
#[derive(Debug, Clone, Serialize)]
pub struct SecretInfo {
    /// Its name.
    pub name: String,
    /// Where it comes from.
    pub source: Source,
    /// Service patterns that may read it (empty: any that names it).
    pub services: Vec<String>,
    /// When it was last set.
    pub updated_at: String,
}

/// Why a guest did not get a secret: all of them the guest's (or its manifest's) doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The manifest does not name it.
    NotDeclared,
    /// No value is provided.
    NotFound,
    /// The secret is limited to other services.
    Denied,
}

/// Why a secret could not be set or removed.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A bad name, value or pattern (the client's fault).
    #[error("{0}")]
    Invalid(String),
    /// The operator provides it from the environment or a file.
    #[error("secret `{0}` is provided by the host's {1}; change it there")]
    Operator(String, &'static str),
    /// No such secret.
    #[error("no secret named `{0}`")]
    NotFound(String),
    /// Storing failed (the host's fault).
    #[error("storing the secret: {0:#}")]
    Storage(anyhow::Error),
}

#[derive(Clone)]
struct Entry {
    secret: Secret,
    source: Source,
}

/// Every secret this host can hand out.
pub struct Secrets {
    backend: Box<dyn SecretBackend>,
    dir: Option<PathBuf>,
    entries: RwLock<BTreeMap<String, Entry>>,
    /// Values replaced or removed while running: a guest may still hold and print
    /// them, so they stay masked (the most recent [`MAX_RETIRED`]) until a restart.
    retired: parking_lot::Mutex<std::collections::VecDeque<String>>,
    redactor: Arc<Redactor>,
    /// Serialises changes through the API, so the backend and memory agree on which
    /// of two concurrent changes of one secret came last.
    changes: parking_lot::Mutex<()>,
}

/// Replaced or removed values kept masked at most.
const MAX_RETIRED: usize = 1000;

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

fn check_value(name: &str, value: &str) -> Result<(), String> {
    if value.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "secret `{name}` is shorter than {MIN_SECRET_BYTES} bytes: a value that short \
             cannot be masked in logs without masking ordinary words"
        ));
    }
    if value.len() > MAX_SECRET_BYTES {
        return Err(format!(
            "secret `{name}` is longer than {MAX_SECRET_BYTES} bytes"
        ));
    }
    Ok(())
}

/// The secrets in the environment `vars`: `SHOAL_SECRET_DB_PASSWORD` is `db-password`.
fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Result<BTreeMap<String, Secret>> {
    let mut found = BTreeMap::new();
    for (key, value) in vars {
        let Some(suffix) = key.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let name = suffix.to_ascii_lowercase().replace('_', "-");
        validate_secret_name(&name).map_err(|reason| anyhow::anyhow!("{key}: {reason}"))?;
        check_value(&name, &value).map_err(|reason| anyhow::anyhow!("{key}: {reason}"))?;
        found.insert(name, Secret::for_every_service(value));
    }
    Ok(found)
}

/// The secrets in `dir`: each regular file named like a secret (others, such as the
/// dot-files of a mounted volume, are skipped). One trailing newline is not part of
/// the value.
fn from_dir(dir: &Path) -> Result<BTreeMap<String, Secret>> {
    let mut found = BTreeMap::new();
    let listing = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for item in listing {
        let item = item.with_context(|| format!("reading {}", dir.display()))?;
        let Some(name) = item.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let path = item.path();
        if validate_secret_name(&name).is_err() || !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut value = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))?;
        if value.ends_with('\n') {
            value.pop();
            if value.ends_with('\r') {
                value.pop();
            }
        }
        check_value(&name, &value)
            .map_err(|reason| anyhow::anyhow!("{}: {reason}", path.display()))?;
        found.insert(name, Secret::for_every_service(value));
    }
    Ok(found)
}

impl Secrets {
    /// The host's secrets: those kept by `backend`, those in `env` and those in `dir`.
    /// A name given by both the environment and the directory is refused.
    pub fn open(
        backend: Box<dyn SecretBackend>,
        env: impl IntoIterator<Item = (String, String)>,
        dir: Option<PathBuf>,
        redactor: Arc<Redactor>,
    ) -> Result<Self> {
        let mut entries: BTreeMap<String, Entry> = backend
            .load()
            .with_context(|| format!("opening the {} secrets", backend.engine()))?
            .into_iter()
            .map(|(name, secret)| {
                let entry = Entry {
                    secret,
                    source: Source::Api,
                };
                (name, entry)
            })
            .collect();
        let env = from_env(env)?;
        let files = match &dir {
            Some(dir) => from_dir(dir)?,
            None => BTreeMap::new(),
        };
        if let Some(name) = env.keys().find(|name| files.contains_key(*name)) {
            bail!("secret `{name}` is given both by the environment and by the secrets directory");
        }
        for (name, source, secret) in env
            .into_iter()
            .map(|(n, s)| (n, Source::Env, s))
            .chain(files.into_iter().map(|(n, s)| (n, Source::File, s)))
        {
            if entries.contains_key(&name) {
                tracing::warn!(secret = %name, "the operator's value shadows the one set through the API");
            }
            entries.insert(name, Entry { secret, source });
        }
        let secrets = Self {
            backend,
            dir,
            entries: RwLock::new(entries),
            retired: Default::default(),
            redactor,
            changes: Default::default(),
        };
        secrets.update_redactor();
        Ok(secrets)
    }

    /// The secrets kept in `data_dir` alone (key file beside them), with no
    /// environment or directory: for tools and tests.
    pub fn in_data_dir(data_dir: &Path, redactor: Arc<Redactor>) -> Result<Self> {
        let backend = sealed::SealedFile::open(data_dir, &data_dir.join(sealed::KEY_FILE))?;
        Self::open(Box::new(backend), Vec::new(), None, redactor)
    }

    fn update_redactor(&self) {
        self.mask_also(&[]);
    }

    /// Mask every current and retired value, and `extra` (values about to be added:
    /// masked before anyone can read them).
    fn mask_also(&self, extra: &[&str]) {
        let entries = self.entries.read();
        let retired = self.retired.lock();
        self.redactor.set_values(
            entries
                .values()
                .map(|entry| entry.secret.value.as_bytes())
                .chain(retired.iter().map(String::as_bytes))
                .chain(extra.iter().map(|value| value.as_bytes())),
        );
    }

    fn retire(&self, value: String) {
        let mut retired = self.retired.lock();
        if retired.len() == MAX_RETIRED {
            retired.pop_front();
        }
        retired.push_back(value);
    }

    /// The redactor that masks these values.
    pub fn redactor(&self) -> &Arc<Redactor> {
        &self.redactor
    }

    /// The value of `name` for `service`, whose manifest names `declared`.
    pub fn reveal(
        &self,
        service: &str,
        declared: &[String],
        name: &str,
    ) -> Result<String, Refusal> {
        if !declared.iter().any(|declared| declared == name) {
            return Err(Refusal::NotDeclared);
        }
        let entries = self.entries.read();
        let entry = entries.get(name).ok_or(Refusal::NotFound)?;
        let patterns = &entry.secret.services;
        if !patterns.is_empty() && !patterns.iter().any(|p| glob_matches(p, service)) {
            return Err(Refusal::Denied);
        }
        Ok(entry.secret.value.clone())
    }

    /// Every secret, without values.
    pub fn list(&self) -> Vec<SecretInfo> {
        self.entries
            .read()
            .iter()
            .map(|(name, entry)| SecretInfo {
                name: name.clone(),
                source: entry.source,
                services: entry.secret.services.clone(),
                updated_at: entry.secret.updated_at.clone(),
            })
            .collect()
    }

    /// Whether a deployer below the `admin` scope may deploy `service` naming the
    /// secret `name`. Its guest could hand the value to anyone, so only a secret the
    /// operator has granted to this service by pattern qualifies: not one granted to
    /// every service (the environment's, the directory's, or one set without
    /// patterns), and not a missing one, which the operator could later set for all.
    pub fn deployer_may_name(&self, service: &str, name: &str) -> Result<(), String> {
        let entries = self.entries.read();
        match entries.get(name) {
            Some(entry)
                if entry
                    .secret
                    .services
                    .iter()
                    .any(|pattern| glob_matches(pattern, service)) =>
            {
                Ok(())
            }
            Some(entry) if entry.secret.services.is_empty() => Err(format!(
                "secret `{name}` is granted to every service; only an admin token may deploy \
                 a service that names it (or grant it to `{service}` by pattern)"
            )),
            Some(_) => Err(format!("secret `{name}` is not granted to `{service}`")),
            None => Err(format!(
                "secret `{name}` is not set; only an admin token may deploy a service that \
                 names a secret the operator has not granted to it"
            )),
        }
    }

    /// Whether `service` can read `name` now, without revealing it: for `shoal show`.
    pub fn status(&self, service: &str, name: &str) -> &'static str {
        match self.reveal(service, &[name.to_owned()], name) {
            Ok(_) => "available",
            Err(Refusal::NotFound) => "missing",
            Err(Refusal::Denied) => "denied",
            Err(Refusal::NotDeclared) => "not-declared",
        }
    }

    fn operator_source(&self, name: &str) -> Option<&'static str> {
        match self.entries.read().get(name).map(|entry| entry.source) {
            Some(Source::Env) => Some("environment"),
            Some(Source::File) => Some("secrets directory"),
            _ => None,
        }
    }

    /// Whether `put(name, value, services)` would be accepted (a cluster checks
    /// before it writes the secret to etcd).
    pub fn check_put(
        &self,
        name: &str,
        value: &str,
        services: &[String],
    ) -> Result<(), SecretError> {
        validate_secret_name(name).map_err(SecretError::Invalid)?;
        check_value(name, value).map_err(SecretError::Invalid)?;
        if services.len() > MAX_PATTERNS {
            return Err(SecretError::Invalid(format!(
                "a secret carries at most {MAX_PATTERNS} service patterns"
            )));
        }
        for pattern in services {
            validate_pattern(pattern).map_err(SecretError::Invalid)?;
        }
        if let Some(source) = self.operator_source(name) {
            return Err(SecretError::Operator(name.to_owned(), source));
        }
        Ok(())
    }

    /// Set `name` through the API: kept durably before this returns.
    pub fn put(
        &self,
        name: &str,
        value: String,
        services: Vec<String>,
    ) -> Result<SecretInfo, SecretError> {
        self.check_put(name, &value, &services)?;
        let _change = self.changes.lock();
        if let Some(source) = self.operator_source(name) {
            return Err(SecretError::Operator(name.to_owned(), source));
        }
        {
            let entries = self.entries.read();
            let api = entries.values().filter(|e| e.source == Source::Api).count();
            if !entries.contains_key(name) && api >= MAX_SECRETS {
                return Err(SecretError::Invalid(format!(
                    "this host keeps at most {MAX_SECRETS} secrets: remove some first"
                )));
            }
        }
        let secret = Secret {
            value,
            services,
            updated_at: now(),
        };
        // The value is masked before anyone can read it.
        self.mask_also(&[&secret.value]);
        if let Err(error) = self.backend.put(name, &secret) {
            self.update_redactor();
            return Err(SecretError::Storage(error));
        }
        let info = SecretInfo {
            name: name.to_owned(),
            source: Source::Api,
            services: secret.services.clone(),
            updated_at: secret.updated_at.clone(),
        };
        let replaced = self.entries.write().insert(
            name.to_owned(),
            Entry {
                secret,
                source: Source::Api,
            },
        );
        if let Some(replaced) = replaced {
            self.retire(replaced.secret.value);
        }
        self.update_redactor();
        Ok(info)
    }

    /// Remove `name` (set through the API).
    pub fn remove(&self, name: &str) -> Result<(), SecretError> {
        let _change = self.changes.lock();
        if let Some(source) = self.operator_source(name) {
            return Err(SecretError::Operator(name.to_owned(), source));
        }
        let existed = self.backend.remove(name).map_err(SecretError::Storage)?;
        if !existed {
            return Err(SecretError::NotFound(name.chars().take(64).collect()));
        }
        let removed = self.entries.write().remove(name);
        if let Some(removed) = removed {
            self.retire(removed.secret.value);
        }
        self.update_redactor();
        Ok(())
    }

    /// Read the secrets directory again: new and changed files take effect, removed
    /// ones stop being readable. A broken directory keeps the values in use.
    pub fn refresh_dir(&self) {
        let Some(dir) = &self.dir else {
            return;
        };
        let files = match from_dir(dir) {
            Ok(files) => files,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "re-reading the secrets directory failed; keeping the values in use");
                return;
            }
        };
        // Most rounds change nothing: compare first, and rebuild the masks only when a
        // file was added, changed or removed.
        let (changed, removed): (Vec<(String, Secret)>, Vec<String>) = {
            let entries = self.entries.read();
            let removed = entries
                .iter()
                .filter(|(name, entry)| entry.source == Source::File && !files.contains_key(*name))
                .map(|(name, _)| name.clone())
                .collect();
            let changed = files
                .into_iter()
                .filter(|(name, secret)| match entries.get(name) {
                    // The environment's value wins (a conflict at start stops it).
                    Some(entry) if entry.source == Source::Env => false,
                    Some(entry) => {
                        entry.source != Source::File || entry.secret.value != secret.value
                    }
                    None => true,
                })
                .collect();
            (changed, removed)
        };
        if changed.is_empty() && removed.is_empty() {
            return;
        }
        let new_values: Vec<&str> = changed.iter().map(|(_, s)| s.value.as_str()).collect();
        self.mask_also(&new_values);
        let mut gone = Vec::new();
        {
            let mut entries = self.entries.write();
            for name in removed {
                gone.extend(entries.remove(&name).map(|entry| entry.secret.value));
            }
            for (name, secret) in changed {
                let entry = Entry {
                    secret,
                    source: Source::File,
                };
                gone.extend(entries.insert(name, entry).map(|old| old.secret.value));
            }
        }
        for value in gone {
            self.retire(value);
        }
        tracing::info!("the secrets directory changed");
        self.update_redactor();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, env: Vec<(String, String)>, files: Option<PathBuf>) -> Result<Secrets> {
        let backend = sealed::SealedFile::open(dir, &dir.join(sealed::KEY_FILE))?;
        Secrets::open(Box::new(backend), env, files, Arc::new(Redactor::default()))
    }

    #[test]
    fn a_service_reads_only_what_it_names_and_is_granted() {
        let dir = tempfile::tempdir().expect("dir");
        let env = vec![
            ("SHOAL_SECRET_DB_PASSWORD".into(), "from-the-env-1".into()),
            ("PATH".into(), "/bin".into()),
        ];
        let secrets = open(dir.path(), env, None).expect("open");
        secrets
            .put("api-key", "api-value-12345".into(), vec!["shop-*".into()])
            .expect("put");
        let named = ["db-password".to_owned(), "api-key".to_owned()];
        assert_eq!(
            secrets.reveal("shop-a", &named, "db-password").as_deref(),
            Ok("from-the-env-1")
        );
        assert_eq!(
            secrets.reveal("shop-a", &named, "api-key").as_deref(),
            Ok("api-value-12345")
        );
        assert_eq!(
            secrets.reveal("billing", &named, "api-key"),
            Err(Refusal::Denied)
        );
        assert_eq!(
            secrets.reveal("shop-a", &named[..1], "api-key"),
            Err(Refusal::NotDeclared)
        );
        let missing = ["nope".to_owned()];
        assert_eq!(
            secrets.reveal("shop-a", &missing, "nope"),
            Err(Refusal::NotFound)
        );
        assert_eq!(secrets.status("billing", "api-key"), "denied");
        // The API cannot overwrite or remove the operator's value.
        assert!(matches!(
            secrets.put("db-password", "another-value".into(), vec![]),
            Err(SecretError::Operator(..))
        ));
        assert!(matches!(
            secrets.remove("db-password"),
            Err(SecretError::Operator(..))
        ));
        // Below admin, a deploy may name only a secret granted to it by pattern.
        assert!(secrets.deployer_may_name("shop-a", "api-key").is_ok());
        assert!(secrets.deployer_may_name("billing", "api-key").is_err());
        let open = secrets
            .deployer_may_name("shop-a", "db-password")
            .expect_err("for all");
        assert!(open.contains("every service"), "{open}");
        assert!(secrets.deployer_may_name("shop-a", "nope").is_err());
        let listed = format!("{:?}", secrets.list());
        assert!(!listed.contains("api-value-12345") && listed.contains("api-key"));
    }

    #[test]
    fn bad_values_and_names_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let secrets = open(dir.path(), vec![], None).expect("open");
        for (name, value, services) in [
            ("Bad_Name", "long-enough-value", vec![]),
            ("short", "1234567", vec![]),
            ("big", &*"x".repeat(MAX_SECRET_BYTES + 1), vec![]),
            ("patterned", "long-enough-value", vec!["a/b".to_owned()]),
        ] {
            let error = secrets.put(name, value.into(), services).expect_err(name);
            assert!(matches!(error, SecretError::Invalid(_)), "{error}");
        }
        assert!(secrets.list().is_empty());
        assert!(matches!(
            secrets.remove("none"),
            Err(SecretError::NotFound(_))
        ));
        let error = open(
            dir.path(),
            vec![("SHOAL_SECRET_X".into(), "short".into())],
            None,
        )
        .err()
        .expect("short env value");
        assert!(format!("{error:#}").contains("SHOAL_SECRET_X"), "{error:#}");
    }

    #[test]
    fn values_are_masked_including_replaced_ones_and_survive_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let secrets = open(dir.path(), vec![], None).expect("open");
        secrets
            .put("db", "first-value-123".into(), vec![])
            .expect("put");
        secrets
            .put("db", "second-value-456".into(), vec![])
            .expect("rotate");
        let masked = secrets
            .redactor()
            .redact("first-value-123 second-value-456");
        assert_eq!(masked, "[redacted] [redacted]");
        secrets.remove("db").expect("remove");
        assert_eq!(secrets.redactor().redact("second-value-456"), "[redacted]");
        secrets
            .put("kept", "kept-value-789".into(), vec![])
            .expect("put");
        drop(secrets);
        let reopened = open(dir.path(), vec![], None).expect("reopen");
        let named = ["kept".to_owned(), "db".to_owned()];
        assert_eq!(
            reopened.reveal("a", &named, "kept").as_deref(),
            Ok("kept-value-789")
        );
        assert_eq!(reopened.reveal("a", &named, "db"), Err(Refusal::NotFound));
        assert_eq!(reopened.redactor().redact("kept-value-789"), "[redacted]");
    }

    #[test]
    fn the_secrets_directory_is_re_read_and_a_broken_one_keeps_the_values() {
        let dir = tempfile::tempdir().expect("dir");
        let files = dir.path().join("mounted");
        std::fs::create_dir(&files).expect("mkdir");
        std::fs::write(files.join("token"), "file-value-0001\n").expect("write");
        std::fs::write(files.join("..data"), "skipped").expect("write");
        let secrets = open(dir.path(), vec![], Some(files.clone())).expect("open");
        let named = ["token".to_owned(), "other".to_owned()];
        assert_eq!(
            secrets.reveal("a", &named, "token").as_deref(),
            Ok("file-value-0001")
        );
        std::fs::write(files.join("token"), "file-value-0002").expect("rotate");
        std::fs::write(files.join("other"), "other-value-01").expect("add");
        secrets.refresh_dir();
        assert_eq!(
            secrets.reveal("a", &named, "token").as_deref(),
            Ok("file-value-0002")
        );
        assert_eq!(
            secrets.reveal("a", &named, "other").as_deref(),
            Ok("other-value-01")
        );
        assert_eq!(secrets.redactor().redact("file-value-0001"), "[redacted]");
        std::fs::write(files.join("other"), "short").expect("break");
        secrets.refresh_dir();
        assert_eq!(
            secrets.reveal("a", &named, "other").as_deref(),
            Ok("other-value-01")
        );
        std::fs::remove_file(files.join("other")).expect("remove");
        secrets.refresh_dir();
        assert_eq!(secrets.reveal("a", &named, "other"), Err(Refusal::NotFound));
        let error = open(
            dir.path(),
            vec![("SHOAL_SECRET_TOKEN".into(), "env-value-0001".into())],
            Some(files),
        )
        .err()
        .expect("given twice");
        assert!(format!("{error:#}").contains("both"), "{error:#}");
    }
}
