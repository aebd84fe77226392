//! Scoped admin tokens, kept in the data directory by the SHA-256 of their secret:
//! the secret is shown once, when the token is created, and never stored.
//!
//! The operator's token (`--admin-token` or the generated `admin-token` file) stays
//! valid as an `admin` token with the id `operator`; it cannot be revoked through the
//! API.

use anyhow::{Context as _, Result};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use subtle::ConstantTimeEq as _;

use super::{Grant, Scope, validate_pattern};

/// File in the data directory that holds the tokens.
pub const TOKENS_FILE: &str = "tokens.json";
/// Tokens a host keeps at most.
pub const MAX_TOKENS: usize = 1000;
/// Patterns one token may carry at most.
pub const MAX_PATTERNS: usize = 32;
/// The id of the operator's token.
pub const OPERATOR: &str = "operator";

/// A token as stored: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Public id, for listing, revoking and the audit log.
    pub id: String,
    /// The operator's name for it.
    pub name: String,
    /// What it may do.
    #[serde(flatten)]
    pub grant: Grant,
    /// When it was created (RFC 3339).
    pub created_at: String,
}

/// A token as kept: what is shown of it and the hash of its secret (what a cluster
/// shares between its hosts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    /// What is shown of it.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// SHA-256 of the secret, hex.
    pub hash: String,
}

/// Why a token could not be created or revoked: the client's fault.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A bad name, scope or pattern; the text says which.
    #[error("{0}")]
    Invalid(String),
    /// No token has this id.
    #[error("no token with id `{0}`")]
    NotFound(String),
    /// Writing the token file failed (the host's fault).
    #[error("storing the tokens: {0:#}")]
    Storage(anyhow::Error),
}

/// The tokens of one host.
pub struct TokenStore {
    path: PathBuf,
    operator_hash: [u8; 32],
    /// What authentication reads: swapped whole, so a change written to disk never
    /// holds up a request's authentication.
    tokens: ArcSwap<Vec<StoredToken>>,
    /// Held by a change (create, revoke) while it writes the file.
    changes: Mutex<()>,
}

fn hash(secret: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(secret.as_bytes()).into()
}

impl TokenStore {
    /// The tokens in `data_dir`, and the operator's token.
    pub fn open(data_dir: &std::path::Path, operator_token: &str) -> Result<Self> {
        let path = data_dir.join(TOKENS_FILE);
        let tokens = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => {
                return Err(error).with_context(|| format!("reading {}", path.display()));
            }
        };
        Ok(Self {
            path,
            operator_hash: hash(operator_token),
            tokens: ArcSwap::from_pointee(tokens),
            changes: Mutex::new(()),
        })
    }

    /// The id and grant of the token whose secret is `secret`, if any. Compares
    /// hashes in constant time.
    pub fn authenticate(&self, secret: &str) -> Option<(String, Grant)> {
        let presented = hash(secret);
        if bool::from(presented.ct_eq(&self.operator_hash)) {
            return Some((OPERATOR.to_owned(), Grant::admin()));
        }
        let presented = hex::encode(presented);
        let tokens = self.tokens.load();
        tokens
            .iter()
            .find(|t| bool::from(t.hash.as_bytes().ct_eq(presented.as_bytes())))
            .map(|t| (t.info.id.clone(), t.info.grant.clone()))
    }

    /// Create a token; returns what is stored and the secret (shown once).
    pub fn create(
        &self,
        name: &str,
        scope: Scope,
        services: Vec<String>,
    ) -> Result<(TokenInfo, String), TokenError> {
        let (token, secret) = Self::mint(name, scope, services)?;
        let info = token.info.clone();
        self.insert(token)?;
        Ok((info, secret))
    }

    /// A new token and its secret, checked but not kept (a cluster writes it to etcd
    /// first, then every host keeps it).
    pub fn mint(
        name: &str,
        scope: Scope,
        services: Vec<String>,
    ) -> Result<(StoredToken, String), TokenError> {
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return Err(TokenError::Invalid(
                "a token name is 1 to 64 letters, digits, `-`, `_` or `.`".into(),
            ));
        }
        if services.len() > MAX_PATTERNS {
            return Err(TokenError::Invalid(format!(
                "a token carries at most {MAX_PATTERNS} service patterns"
            )));
        }
        for pattern in &services {
            validate_pattern(pattern).map_err(TokenError::Invalid)?;
        }
        if scope != Scope::Deploy && !services.is_empty() {
            return Err(TokenError::Invalid(
                "service patterns apply to the `deploy` scope only".into(),
            ));
        }
        let secret = format!(
            "shoal_{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        );
        let info = TokenInfo {
            id: format!("tok_{:016x}", rand::random::<u64>()),
            name: name.to_owned(),
            grant: Grant { scope, services },
            created_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        };
        let hash = hex::encode(hash(&secret));
        Ok((StoredToken { info, hash }, secret))
    }

    /// Keep `token` (made by [`TokenStore::mint`]).
    pub fn insert(&self, token: StoredToken) -> Result<(), TokenError> {
        let _change = self.changes.lock();
        let tokens = self.tokens.load_full();
        if tokens.len() >= MAX_TOKENS {
            return Err(TokenError::Invalid(format!(
                "this host keeps at most {MAX_TOKENS} tokens: revoke some first"
            )));
        }
        let mut next = Vec::clone(&tokens);
        next.retain(|t| t.info.id != token.info.id);
        next.push(token);
        self.persist(&next)?;
        self.tokens.store(std::sync::Arc::new(next));
        Ok(())
    }

    /// Make the kept tokens exactly `tokens` (a cluster's, as etcd holds them);
    /// returns whether anything changed.
    pub fn replace_all(&self, mut tokens: Vec<StoredToken>) -> Result<bool, TokenError> {
        tokens.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        tokens.truncate(MAX_TOKENS);
        let _change = self.changes.lock();
        let mut current = Vec::clone(&self.tokens.load_full());
        current.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        if current == tokens {
            return Ok(false);
        }
        self.persist(&tokens)?;
        self.tokens.store(std::sync::Arc::new(tokens));
        Ok(true)
    }

    /// Every token, without secrets.
    pub fn list(&self) -> Vec<TokenInfo> {
        self.tokens.load().iter().map(|t| t.info.clone()).collect()
    }

    /// Revoke token `id`: from now on it is unknown (401).
    pub fn revoke(&self, id: &str) -> Result<(), TokenError> {
        let _change = self.changes.lock();
        let tokens = self.tokens.load_full();
        let mut next = Vec::clone(&tokens);
        next.retain(|t| t.info.id != id);
        if next.len() == tokens.len() {
            return Err(TokenError::NotFound(id.chars().take(64).collect()));
        }
        self.persist(&next)?;
        self.tokens.store(std::sync::Arc::new(next));
        Ok(())
    }

    fn persist(&self, tokens: &[StoredToken]) -> Result<(), TokenError> {
        let bytes =
            serde_json::to_vec_pretty(tokens).map_err(|error| TokenError::Storage(error.into()))?;
        crate::data_dir::write_durably(&self.path, &bytes).map_err(TokenError::Storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_hashed_and_revocable_across_restarts() {
        let dir = tempfile::tempdir().expect("dir");
        let store = TokenStore::open(dir.path(), "operator-secret").expect("open");
        assert_eq!(
            store.authenticate("operator-secret"),
            Some((OPERATOR.to_owned(), Grant::admin()))
        );
        let (info, secret) = store
            .create("ci", Scope::Deploy, vec!["shop-*".into()])
            .expect("create");
        let on_disk = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).expect("file");
        assert!(!on_disk.contains(&secret), "the secret is never stored");
        let store = TokenStore::open(dir.path(), "operator-secret").expect("reopen");
        let (id, grant) = store.authenticate(&secret).expect("known");
        assert_eq!(id, info.id);
        assert_eq!(grant.services, ["shop-*"]);
        assert!(store.authenticate("shoal_wrong").is_none());
        store.revoke(&info.id).expect("revoke");
        assert!(store.authenticate(&secret).is_none());
        assert!(matches!(
            store.revoke(&info.id),
            Err(TokenError::NotFound(_))
        ));
        let store = TokenStore::open(dir.path(), "operator-secret").expect("reopen");
        assert!(store.authenticate(&secret).is_none(), "revoked for good");
    }

    #[test]
    fn a_change_being_written_holds_up_no_authentication() {
        let dir = tempfile::tempdir().expect("dir");
        let store = TokenStore::open(dir.path(), "x").expect("open");
        let (info, secret) = store.create("ci", Scope::Read, vec![]).expect("created");
        let writing = store.changes.lock();
        let (done, checked) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let _ = done.send(store.authenticate(&secret).map(|(id, _)| id));
            });
            let answer = checked
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("authenticated while a change holds its lock");
            assert_eq!(answer, Some(info.id.clone()));
        });
        drop(writing);
    }

    #[test]
    fn bad_tokens_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let store = TokenStore::open(dir.path(), "x").expect("open");
        assert!(store.create("", Scope::Read, vec![]).is_err());
        assert!(store.create("a b", Scope::Read, vec![]).is_err());
        assert!(
            store
                .create("r", Scope::Read, vec!["shop-*".into()])
                .is_err()
        );
        assert!(
            store
                .create("d", Scope::Deploy, vec!["a/b".into()])
                .is_err()
        );
        assert!(store.list().is_empty());
    }
}
