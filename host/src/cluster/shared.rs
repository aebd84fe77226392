//! What the hosts of a cluster share besides services: scoped admin tokens (by the
//! hash of their secret) and the operator's secrets (encrypted with a key derived
//! from the cluster token). Each is written to etcd first, then kept by every host,
//! so a token or secret made through one host works on all of them, and a revoked
//! token stops working everywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Weak};

use super::{Cluster, ClusterError};
use crate::access::Scope;
use crate::access::tokens::{StoredToken, TokenError, TokenInfo, TokenStore};
use crate::registry::etcd::Etcd;
use crate::secrets::{SecretError, SecretInfo, Secrets};

/// A secret as etcd holds it: its value encrypted, never in the clear.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SecretRecord {
    /// The value, encrypted with the cluster's secrets key (hex).
    pub sealed: String,
    /// Services that may read it.
    pub services: Vec<String>,
}

/// Why a shared token or secret could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The token's own checks refused it.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The secret's own checks refused it.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// etcd could not be reached; nothing changed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// Longest wait for another host's audit entries.
const AUDIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl Cluster {
    /// Keep `audit` as this host's log, which peers read through [`Cluster::local_audit`].
    pub fn set_audit(&self, audit: Arc<crate::access::audit::AuditLog>) {
        let _ = self.audit.set(audit);
    }

    /// This host's last `limit` audit entries, oldest first.
    pub async fn local_audit(
        &self,
        limit: usize,
    ) -> anyhow::Result<Vec<shoal_api::access::AuditEntry>> {
        let Some(audit) = self.audit.get().cloned() else {
            return Ok(Vec::new());
        };
        let entries = tokio::task::spawn_blocking(move || audit.recent(limit)).await??;
        Ok(entries.into_iter().map(Into::into).collect())
    }

    /// The last `limit` audit entries of every other live host, each naming its host,
    /// and the hosts that could not be read (down, or not answering in time).
    pub async fn peer_audit(
        &self,
        limit: usize,
    ) -> (Vec<shoal_api::access::AuditEntry>, Vec<String>) {
        use http_body_util::BodyExt as _;
        let view = self.view();
        let mut entries = Vec::new();
        let mut unreachable = Vec::new();
        let reads = view
            .members
            .values()
            .filter(|member| member.id != self.host_id)
            .map(|member| {
                let live = view.hosts.get(&member.id).cloned();
                async move {
                    let Some(host) = live else {
                        return (member.id.clone(), Err(anyhow::anyhow!("down")));
                    };
                    let uri = self.peers.url(
                        host.peer_address(),
                        &format!("{}audit?limit={limit}", super::peers::PEER_PATH),
                    );
                    let read = async {
                        let request = http::Request::get(uri).body(
                            http_body_util::Empty::<bytes::Bytes>::new()
                                .map_err(|never| match never {})
                                .boxed_unsync(),
                        )?;
                        let response = self.peers.send(request).await?;
                        anyhow::ensure!(
                            response.status().is_success(),
                            "answered {}",
                            response.status()
                        );
                        let body =
                            http_body_util::Limited::new(response.into_body(), 64 * 1024 * 1024)
                                .collect()
                                .await
                                .map_err(|error| anyhow::anyhow!("{error}"))?
                                .to_bytes();
                        Ok(serde_json::from_slice::<Vec<shoal_api::access::AuditEntry>>(&body)?)
                    };
                    let result = tokio::time::timeout(AUDIT_TIMEOUT, read)
                        .await
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in time")));
                    (member.id.clone(), result)
                }
            });
        for (host, result) in futures::future::join_all(reads).await {
            match result {
                Ok(theirs) => entries.extend(theirs.into_iter().map(|mut entry| {
                    entry.host = Some(host.clone());
                    entry
                })),
                Err(error) => {
                    tracing::debug!(%host, %error, "cannot read a host's audit log");
                    unreachable.push(host);
                }
            }
        }
        (entries, unreachable)
    }

    /// Create a token for the whole cluster; returns it and its secret (shown once).
    pub async fn create_token(
        &self,
        tokens: &TokenStore,
        name: &str,
        scope: Scope,
        services: Vec<String>,
    ) -> Result<(TokenInfo, String), SharedError> {
        let (token, secret) = TokenStore::mint(name, scope, services)?;
        let key = self.etcd.key(&format!("tokens/{}", token.info.id));
        let txn = etcd_client::Txn::new()
            .when([etcd_client::Compare::create_revision(
                key.clone(),
                etcd_client::CompareOp::Equal,
                0,
            )])
            .and_then([etcd_client::TxnOp::put(
                key.clone(),
                self.etcd.seal(&key, &token),
                None,
            )]);
        let mut client = self.etcd.client();
        Etcd::bounded(client.txn(txn))
            .await
            .map_err(ClusterError::from)?;
        let info = token.info.clone();
        tokens.insert(token)?;
        Ok((info, secret))
    }

    /// Revoke token `id` on every host.
    pub async fn revoke_token(&self, tokens: &TokenStore, id: &str) -> Result<(), SharedError> {
        let key = self.etcd.key(&format!("tokens/{id}"));
        let mut client = self.etcd.client();
        let deleted = Etcd::bounded(client.delete(key, None))
            .await
            .map_err(ClusterError::from)?;
        let local = tokens.revoke(id);
        if deleted.deleted() == 0 {
            local?;
        }
        Ok(())
    }

    /// Set secret `name` for the whole cluster.
    pub async fn put_secret(
        &self,
        secrets: &Secrets,
        name: &str,
        value: String,
        services: Vec<String>,
    ) -> Result<SecretInfo, SharedError> {
        secrets.check_put(name, &value, &services)?;
        let sealed = self
            .etcd
            .cluster_key()
            .encrypt_secret(name, value.as_bytes())
            .map_err(SecretError::Storage)?;
        let key = self.etcd.key(&format!("secrets/{name}"));
        let record = SecretRecord {
            sealed,
            services: services.clone(),
        };
        let mut client = self.etcd.client();
        Etcd::bounded(client.put(key.clone(), self.etcd.seal(&key, &record), None))
            .await
            .map_err(ClusterError::from)?;
        Ok(secrets.put(name, value, services)?)
    }

    /// Remove secret `name` from the whole cluster.
    pub async fn remove_secret(&self, secrets: &Secrets, name: &str) -> Result<(), SharedError> {
        let key = self.etcd.key(&format!("secrets/{name}"));
        let mut client = self.etcd.client();
        let deleted = Etcd::bounded(client.delete(key, None))
            .await
            .map_err(ClusterError::from)?;
        let local = secrets.remove(name);
        if deleted.deleted() == 0 {
            local?;
        }
        Ok(())
    }
}

/// Keep this host's tokens and secrets equal to the cluster's. The first round also
/// drops what the host kept before it joined (the cluster's are the ones that count);
/// later rounds apply what changed in etcd, so a token or secret this host has just
/// written is never taken back by a view that does not show it yet.
pub async fn follow(cluster: Weak<Cluster>, tokens: Arc<TokenStore>, secrets: Arc<Secrets>) {
    let Some(mut view) = cluster.upgrade().map(|c| c.view.clone()) else {
        return;
    };
    let mut first = true;
    let mut seen_tokens: BTreeMap<String, StoredToken> = BTreeMap::new();
    let mut applied_secrets: BTreeMap<String, i64> = BTreeMap::new();
    loop {
        let snapshot = view.borrow_and_update().clone();
        if snapshot.loaded {
            let Some(this) = cluster.upgrade() else {
                return;
            };
            if first {
                let all: Vec<StoredToken> = snapshot.tokens.values().cloned().collect();
                if let Err(error) = tokens.replace_all(all) {
                    tracing::warn!(%error, "cannot keep the cluster's tokens");
                }
                let names: BTreeSet<&String> = snapshot.secrets.keys().collect();
                for info in secrets.list() {
                    if info.source == crate::secrets::Source::Api && !names.contains(&info.name) {
                        let _ = secrets.remove(&info.name);
                    }
                }
                first = false;
            } else {
                for (id, token) in &snapshot.tokens {
                    if seen_tokens.get(id) != Some(token)
                        && let Err(error) = tokens.insert(token.clone())
                    {
                        tracing::warn!(%error, "cannot keep a cluster token");
                    }
                }
                for id in seen_tokens
                    .keys()
                    .filter(|id| !snapshot.tokens.contains_key(*id))
                {
                    let _ = tokens.revoke(id);
                }
            }
            seen_tokens = snapshot.tokens.clone();
            for (name, (record, revision)) in &snapshot.secrets {
                if applied_secrets.get(name) == Some(revision) {
                    continue;
                }
                let Some(value) = this
                    .etcd
                    .cluster_key()
                    .decrypt_secret(name, &record.sealed)
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                else {
                    tracing::warn!(secret = %name, "a cluster secret does not open with this cluster's token; ignored");
                    continue;
                };
                match secrets.put(name, value, record.services.clone()) {
                    Ok(_) => {
                        applied_secrets.insert(name.clone(), *revision);
                    }
                    Err(error) => {
                        tracing::warn!(secret = %name, %error, "cannot keep a cluster secret")
                    }
                }
            }
            let gone: Vec<String> = applied_secrets
                .keys()
                .filter(|name| !snapshot.secrets.contains_key(*name))
                .cloned()
                .collect();
            for name in gone {
                applied_secrets.remove(&name);
                let _ = secrets.remove(&name);
            }
        }
        if view.changed().await.is_err() {
            return;
        }
    }
}
