//! What Shoal trusts: which certificate authorities as a TLS client (the CLI talking
//! to an `https://` admin API, the host talking to PostgreSQL), an operator's own CA
//! file or the public web's roots without one; and, in a cluster, who holds the
//! cluster token ([`ClusterKey`]): records in etcd and requests between hosts carry a
//! MAC made with it, so neither another etcd user nor a host without the token can
//! pose as a member.

use anyhow::{Context as _, Result, bail};
use std::path::Path;
use std::sync::Arc;

/// A TLS client configuration that verifies servers against `ca_file`'s certificates
/// (PEM), or the public web's roots when there is none.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig> {
    let roots = match ca_file {
        Some(path) => roots(path)?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            roots
        }
    };
    Ok(client_builder()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The certificates in `path` (PEM) as trust roots; at least one must load.
pub fn roots(path: &Path) -> Result<rustls::RootCertStore> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not PEM certificates", path.display()))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        bail!("{} holds no usable certificate", path.display());
    }
    Ok(roots)
}

/// The TLS client configuration of a cluster host talking to its peers: their
/// certificates must chain to `ca_file`, and this host shows `cert_file`/`key_file`.
pub fn peer_client_config(
    ca_file: &Path,
    cert_file: &Path,
    key_file: &Path,
) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert_file)
        .with_context(|| format!("reading {}", cert_file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not PEM certificates", cert_file.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate", cert_file.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("reading the private key {}", key_file.display()))?;
    client_builder()?
        .with_root_certificates(roots(ca_file)?)
        .with_client_auth_cert(chain, key)
        .context("the cluster certificate and key do not match")
}

fn client_builder() -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")
}

/// The cluster token as a MAC key. Records are signed under one derived key and peer
/// credentials under another, so a peer credential seen on the wire cannot sign a
/// record.
#[derive(Clone)]
pub struct ClusterKey {
    records: ring::hmac::Key,
    peers: ring::hmac::Key,
    /// Encrypts secrets' values in etcd.
    secrets: [u8; 32],
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// Shortest cluster token accepted, in bytes: a guessable token lets anyone join.
pub const MIN_CLUSTER_TOKEN: usize = 16;

impl ClusterKey {
    /// The key of `token` (surrounding whitespace ignored).
    pub fn new(token: &str) -> Result<Self> {
        let token = token.trim();
        if token.len() < MIN_CLUSTER_TOKEN {
            bail!(
                "the cluster token is {} bytes; at least {MIN_CLUSTER_TOKEN} are needed \
                 (e.g. `openssl rand -hex 32`)",
                token.len()
            );
        }
        let root = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.as_bytes());
        let derive = |purpose: &[u8]| {
            let tag = ring::hmac::sign(&root, purpose);
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, tag.as_ref())
        };
        let mut secrets = [0u8; 32];
        secrets.copy_from_slice(ring::hmac::sign(&root, b"shoal cluster secrets v1").as_ref());
        Ok(Self {
            records: derive(b"shoal cluster records v1"),
            peers: derive(b"shoal cluster peers v1"),
            secrets,
        })
    }

    /// The key of the token in `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("reading the cluster token {}", path.display()))?;
        Self::new(&token).with_context(|| format!("the cluster token in {}", path.display()))
    }

    /// The MAC of a record stored under `key` with `value` (hex): binding the key
    /// stops a valid record being copied under another key.
    pub fn sign_record(&self, key: &[u8], value: &[u8]) -> String {
        let mut context = ring::hmac::Context::with_key(&self.records);
        context.update(&(key.len() as u64).to_be_bytes());
        context.update(key);
        context.update(value);
        hex::encode(context.sign().as_ref())
    }

    /// Whether `mac` is the MAC of `key` and `value` (compared in constant time).
    pub fn verify_record(&self, key: &[u8], value: &[u8], mac: &str) -> bool {
        let Ok(mac) = hex::decode(mac) else {
            return false;
        };
        let mut message = Vec::with_capacity(8 + key.len() + value.len());
        message.extend_from_slice(&(key.len() as u64).to_be_bytes());
        message.extend_from_slice(key);
        message.extend_from_slice(value);
        ring::hmac::verify(&self.records, &message, &mac).is_ok()
    }

    /// A short public name derived from the token (hex): hosts with other tokens on
    /// the same etcd prefix campaign in another election, so a misconfigured host
    /// can never lead this cluster.
    pub fn tag(&self) -> String {
        let tag = ring::hmac::sign(&self.peers, b"shoal cluster tag v1");
        hex::encode(&tag.as_ref()[..8])
    }

    /// `value` encrypted for etcd (AES-256-GCM, a random nonce, `name` bound as
    /// associated data), hex.
    pub fn encrypt_secret(&self, name: &str, value: &[u8]) -> Result<String> {
        use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &self.secrets).map_err(|_| anyhow::anyhow!("key"))?,
        );
        let nonce_bytes: [u8; 12] = rand::random();
        let mut sealed = value.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(name.as_bytes()),
            &mut sealed,
        )
        .map_err(|_| anyhow::anyhow!("encrypting secret `{name}`"))?;
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&sealed);
        Ok(hex::encode(out))
    }

    /// The value [`ClusterKey::encrypt_secret`] made of `name`, if it opens.
    pub fn decrypt_secret(&self, name: &str, sealed: &str) -> Option<Vec<u8>> {
        use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
        let bytes = hex::decode(sealed).ok()?;
        if bytes.len() < 12 {
            return None;
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.secrets).ok()?);
        let mut buffer = ciphertext.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let plain = key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut buffer)
            .ok()?;
        Some(plain.to_vec())
    }

    /// The credential host `host_id` presents to its peers: `host_id:mac`.
    pub fn peer_credential(&self, host_id: &str) -> String {
        let tag = ring::hmac::sign(&self.peers, host_id.as_bytes());
        format!("{host_id}:{}", hex::encode(tag.as_ref()))
    }

    /// The host a peer credential names, if it was made with this key.
    pub fn verify_peer<'a>(&self, credential: &'a str) -> Option<&'a str> {
        let (host_id, mac) = credential.rsplit_once(':')?;
        let mac = hex::decode(mac).ok()?;
        ring::hmac::verify(&self.peers, host_id.as_bytes(), &mac).ok()?;
        Some(host_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_peers_verify_only_under_the_same_token() {
        let key = ClusterKey::new("a-long-enough-cluster-token").expect("key");
        let other = ClusterKey::new("another-long-cluster-token").expect("key");
        let mac = key.sign_record(b"/shoal/hosts/a", b"{}");
        assert!(key.verify_record(b"/shoal/hosts/a", b"{}", &mac));
        assert!(!other.verify_record(b"/shoal/hosts/a", b"{}", &mac));
        // Bound to its key and its value.
        assert!(!key.verify_record(b"/shoal/hosts/b", b"{}", &mac));
        assert!(!key.verify_record(b"/shoal/hosts/a", b"{ }", &mac));
        assert!(!key.verify_record(b"/shoal/hosts/a", b"{}", "not hex"));
        let credential = key.peer_credential("host-1");
        assert_eq!(key.verify_peer(&credential), Some("host-1"));
        assert_eq!(other.verify_peer(&credential), None);
        assert_eq!(
            key.verify_peer(&credential.replace("host-1", "host-2")),
            None
        );
        assert_eq!(key.verify_peer("host-1"), None);
        // A record MAC is not a peer credential.
        assert_eq!(key.verify_peer(&format!("host-1:{mac}")), None);
    }

    #[test]
    fn secrets_open_only_with_the_same_token_and_name() {
        let key = ClusterKey::new("a-long-enough-cluster-token").expect("key");
        let other = ClusterKey::new("another-long-cluster-token").expect("key");
        let sealed = key.encrypt_secret("db", b"hunter2").expect("sealed");
        assert!(!sealed.contains(&hex::encode(b"hunter2")));
        assert_eq!(
            key.decrypt_secret("db", &sealed).as_deref(),
            Some(&b"hunter2"[..])
        );
        assert_eq!(other.decrypt_secret("db", &sealed), None);
        assert_eq!(
            key.decrypt_secret("api", &sealed),
            None,
            "bound to its name"
        );
        assert_eq!(key.decrypt_secret("db", "00"), None);
        assert_ne!(
            sealed,
            key.encrypt_secret("db", b"hunter2").expect("sealed"),
            "fresh nonce"
        );
    }

    #[test]
    fn a_short_cluster_token_is_refused() {
        let error = ClusterKey::new("  short \n").expect_err("refused");
        assert!(format!("{error:#}").contains("openssl rand"), "{error:#}");
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let error = client_config(Some(&empty)).expect_err("refused");
        assert!(
            format!("{error:#}").contains("no usable certificate"),
            "{error:#}"
        );
        let missing = dir.path().join("missing.pem");
        let error = client_config(Some(&missing)).expect_err("refused");
        assert!(format!("{error:#}").contains("reading"), "{error:#}");
        assert!(client_config(None).is_ok(), "the public roots");
    }
}
