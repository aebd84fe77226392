//! The embedded secret backend: one file in the data directory whose values are
//! sealed with AES-256-GCM under a host key kept in a separate file. The secret's
//! name, the services allowed to read it and when it was set are the associated
//! data, so a sealed value cannot be moved to another name and its services list
//! cannot be edited undetected (files of format 1, which bound the name only, are
//! sealed again at open).
//!
//! The key file is created (mode 0600) on first use when no sealed secrets exist yet;
//! it can live outside the data directory (`--secrets-key-file`), so a copy of the
//! data directory alone does not reveal a value.

use anyhow::{Context as _, Result, bail};
use parking_lot::Mutex;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Secret, SecretBackend};

/// The sealed secrets, in the data directory.
pub const SECRETS_FILE: &str = "secrets.json";
/// The default key file, in the data directory.
pub const KEY_FILE: &str = "secrets.key";

/// The file format written: values bound to name, services and time.
const FORMAT: u32 = 2;

/// What a sealed value is bound to: its name, the services that may read it and
/// when it was set, unambiguously joined (names and patterns hold no NUL).
fn associated_data(name: &str, services: &[String], updated_at: &str) -> Vec<u8> {
    let mut bound = format!("shoal-secret\0{name}\0{updated_at}").into_bytes();
    for service in services {
        bound.push(0);
        bound.extend_from_slice(service.as_bytes());
    }
    bound
}

#[derive(Serialize, Deserialize)]
struct SealedFileFormat {
    format: u32,
    /// The first bytes of the key's SHA-256: tells a wrong key from a damaged file.
    key_id: String,
    secrets: BTreeMap<String, SealedEntry>,
}

#[derive(Clone, Serialize, Deserialize)]
struct SealedEntry {
    services: Vec<String>,
    updated_at: String,
    nonce: String,
    sealed: String,
}

/// Secrets sealed in [`SECRETS_FILE`].
pub struct SealedFile {
    path: PathBuf,
    key: LessSafeKey,
    key_id: String,
    entries: Mutex<BTreeMap<String, SealedEntry>>,
}

fn key_id(key: &[u8]) -> String {
    crate::data_dir::sha256_hex(key)[..16].to_owned()
}

/// Read the 32-byte key (hex) at `path`, or create one when `may_create`.
fn load_or_create_key(path: &Path, may_create: bool) -> Result<Vec<u8>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = hex::decode(text.trim())
                .ok()
                .filter(|key| key.len() == 32)
                .with_context(|| {
                    format!(
                        "the secrets key {} is not 64 hex digits (32 bytes)",
                        path.display()
                    )
                })?;
            Ok(key)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && may_create => {
            let key: [u8; 32] = rand::random();
            write_private(path, format!("{}\n", hex::encode(key)).as_bytes())?;
            tracing::info!(path = %path.display(), "created the key that seals secrets at rest");
            Ok(key.to_vec())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => bail!(
            "the secrets in {SECRETS_FILE} were sealed with a key that is not at {}: \
             give its location with --secrets-key-file",
            path.display()
        ),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

impl SealedFile {
    /// The sealed secrets of `data_dir`, opened with the key at `key_path`.
    pub fn open(data_dir: &Path, key_path: &Path) -> Result<Self> {
        let path = data_dir.join(SECRETS_FILE);
        let stored: Option<SealedFileFormat> = match std::fs::read(&path) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", path.display()))?,
            ),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => {
                return Err(error).with_context(|| format!("reading {}", path.display()));
            }
        };
        let key_bytes = load_or_create_key(
            key_path,
            stored.as_ref().is_none_or(|file| file.secrets.is_empty()),
        )?;
        let key_id = key_id(&key_bytes);
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &key_bytes)
                .map_err(|_| anyhow::anyhow!("the secrets key is not an AES-256 key"))?,
        );
        let format = stored.as_ref().map_or(FORMAT, |file| file.format);
        let entries = match stored {
            Some(file) if !file.secrets.is_empty() && file.key_id != key_id => bail!(
                "the secrets in {} were sealed with another key than {} (key id {} there, {key_id} here)",
                path.display(),
                key_path.display(),
                file.key_id
            ),
            Some(file) => file.secrets,
            None => BTreeMap::new(),
        };
        let sealed = Self {
            path,
            key,
            key_id,
            entries: Mutex::new(entries),
        };
        match format {
            FORMAT => {}
            1 => sealed.seal_again_binding_everything()?,
            other => bail!(
                "{} has format {other}, which this host does not know",
                sealed.path.display()
            ),
        }
        Ok(sealed)
    }

    /// Seal every value of a format-1 file (which bound only the name) again, bound
    /// to its name, services and time, and write the file as the current format.
    fn seal_again_binding_everything(&self) -> Result<()> {
        let mut entries = self.entries.lock();
        let mut next = BTreeMap::new();
        for (name, entry) in entries.iter() {
            let value = self.unseal_with(name, entry, name.as_bytes())?;
            let (nonce, sealed) = self.seal(name, &value, &entry.services, &entry.updated_at)?;
            next.insert(
                name.clone(),
                SealedEntry {
                    nonce,
                    sealed,
                    ..entry.clone()
                },
            );
        }
        self.persist(&next)?;
        *entries = next;
        Ok(())
    }

    fn seal(
        &self,
        name: &str,
        value: &str,
        services: &[String],
        updated_at: &str,
    ) -> Result<(String, String)> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut sealed = value.as_bytes().to_vec();
        let bound = associated_data(name, services, updated_at);
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(bound.as_slice()),
                &mut sealed,
            )
            .map_err(|_| anyhow::anyhow!("sealing secret `{name}` failed"))?;
        Ok((hex::encode(nonce_bytes), hex::encode(sealed)))
    }

    fn unseal(&self, name: &str, entry: &SealedEntry) -> Result<String> {
        let bound = associated_data(name, &entry.services, &entry.updated_at);
        self.unseal_with(name, entry, &bound)
    }

    fn unseal_with(&self, name: &str, entry: &SealedEntry, bound: &[u8]) -> Result<String> {
        let damaged = || format!("secret `{name}` in {} is damaged", self.path.display());
        let nonce: [u8; NONCE_LEN] = hex::decode(&entry.nonce)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .with_context(damaged)?;
        let mut sealed = hex::decode(&entry.sealed).ok().with_context(damaged)?;
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(bound),
                &mut sealed,
            )
            .ok()
            .with_context(damaged)?;
        String::from_utf8(plain.to_vec()).ok().with_context(damaged)
    }

    fn persist(&self, entries: &BTreeMap<String, SealedEntry>) -> Result<()> {
        let file = SealedFileFormat {
            format: FORMAT,
            key_id: self.key_id.clone(),
            secrets: entries.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file)?;
        crate::data_dir::write_durably(&self.path, &bytes)
    }
}

impl SecretBackend for SealedFile {
    fn engine(&self) -> &'static str {
        "sealed-file"
    }

    fn load(&self) -> Result<BTreeMap<String, Secret>> {
        let entries = self.entries.lock().clone();
        entries
            .into_iter()
            .map(|(name, entry)| {
                let value = self.unseal(&name, &entry)?;
                let secret = Secret {
                    value,
                    services: entry.services,
                    updated_at: entry.updated_at,
                };
                Ok((name, secret))
            })
            .collect()
    }

    fn put(&self, name: &str, secret: &Secret) -> Result<()> {
        let (nonce, sealed) =
            self.seal(name, &secret.value, &secret.services, &secret.updated_at)?;
        let mut entries = self.entries.lock();
        let mut next = entries.clone();
        next.insert(
            name.to_owned(),
            SealedEntry {
                services: secret.services.clone(),
                updated_at: secret.updated_at.clone(),
                nonce,
                sealed,
            },
        );
        self.persist(&next)?;
        *entries = next;
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<bool> {
        let mut entries = self.entries.lock();
        if !entries.contains_key(name) {
            return Ok(false);
        }
        let mut next = entries.clone();
        next.remove(name);
        self.persist(&next)?;
        *entries = next;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(value: &str) -> Secret {
        Secret {
            value: value.into(),
            services: vec!["shop-*".into()],
            updated_at: "now".into(),
        }
    }

    #[test]
    fn values_are_sealed_at_rest_and_open_after_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let key = dir.path().join("elsewhere/secrets.key");
        let sealed = SealedFile::open(dir.path(), &key).expect("open");
        sealed.put("db", &secret("canary-value-1234")).expect("put");
        let on_disk = std::fs::read_to_string(dir.path().join(SECRETS_FILE)).expect("file");
        assert!(!on_disk.contains("canary-value-1234"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key).expect("key").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let reopened = SealedFile::open(dir.path(), &key).expect("reopen");
        let loaded = reopened.load().expect("load");
        assert_eq!(loaded["db"].value, "canary-value-1234");
        assert_eq!(loaded["db"].services, ["shop-*"]);
        assert!(reopened.remove("db").expect("remove"));
        assert!(!reopened.remove("db").expect("gone"));
        assert!(
            SealedFile::open(dir.path(), &key)
                .expect("again")
                .load()
                .expect("load")
                .is_empty()
        );
    }

    #[test]
    fn a_file_of_the_first_format_is_sealed_again_binding_its_services() {
        let dir = tempfile::tempdir().expect("dir");
        let key_path = dir.path().join(KEY_FILE);
        let sealed = SealedFile::open(dir.path(), &key_path).expect("open");
        // Written as format 1 did: bound to the name only.
        let nonce_bytes = [3u8; NONCE_LEN];
        let mut value = b"canary-value-1234".to_vec();
        sealed
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(b"db".as_slice()),
                &mut value,
            )
            .expect("seal");
        let entry = SealedEntry {
            services: vec!["shop-*".into()],
            updated_at: "then".into(),
            nonce: hex::encode(nonce_bytes),
            sealed: hex::encode(value),
        };
        let old = SealedFileFormat {
            format: 1,
            key_id: sealed.key_id.clone(),
            secrets: BTreeMap::from([("db".to_owned(), entry)]),
        };
        let path = dir.path().join(SECRETS_FILE);
        std::fs::write(&path, serde_json::to_vec(&old).expect("json")).expect("write");
        let reopened = SealedFile::open(dir.path(), &key_path).expect("reopen");
        assert_eq!(
            reopened.load().expect("load")["db"].value,
            "canary-value-1234"
        );
        let text = std::fs::read_to_string(&path).expect("file");
        assert!(text.contains("\"format\": 2"), "{text}");
        std::fs::write(&path, text.replace("\"shop-*\"", "\"*\"")).expect("write");
        let widened = SealedFile::open(dir.path(), &key_path).expect("open");
        assert!(widened.load().is_err(), "the services are bound now");
    }

    #[test]
    fn a_missing_or_wrong_key_or_a_moved_value_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("dir");
        let key = dir.path().join("secrets.key");
        SealedFile::open(dir.path(), &key)
            .expect("open")
            .put("db", &secret("canary-value-1234"))
            .expect("put");
        let moved = dir.path().join("moved.key");
        let error = SealedFile::open(dir.path(), &moved).err().expect("no key");
        assert!(
            format!("{error:#}").contains("--secrets-key-file"),
            "{error:#}"
        );
        std::fs::write(&moved, format!("{}\n", hex::encode([7u8; 32]))).expect("write");
        let error = SealedFile::open(dir.path(), &moved)
            .err()
            .expect("wrong key");
        assert!(format!("{error:#}").contains("another key"), "{error:#}");
        // Nor with other services allowed to read it.
        let path = dir.path().join(SECRETS_FILE);
        let text = std::fs::read_to_string(&path).expect("file");
        std::fs::write(&path, text.replace("\"shop-*\"", "\"*\"")).expect("write");
        let error = SealedFile::open(dir.path(), &key)
            .expect("open")
            .load()
            .expect_err("widened");
        assert!(format!("{error:#}").contains("damaged"), "{error:#}");
        std::fs::write(&path, &text).expect("restore");
        // A value sealed under one name does not open under another.
        let text = std::fs::read_to_string(&path).expect("file");
        std::fs::write(&path, text.replace("\"db\"", "\"other\"")).expect("write");
        let sealed = SealedFile::open(dir.path(), &key).expect("open");
        let error = sealed.load().expect_err("damaged");
        assert!(format!("{error:#}").contains("damaged"), "{error:#}");
    }
}
