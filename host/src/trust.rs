//! Which certificate authorities Shoal trusts as a TLS client (the CLI talking to an
//! `https://` admin API, the host talking to PostgreSQL): an operator's own CA file,
//! or the public web's roots without one.

use anyhow::{Context as _, Result, bail};
use std::path::Path;
use std::sync::Arc;

/// A TLS client configuration that verifies servers against `ca_file`'s certificates
/// (PEM), or the public web's roots when there is none.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{} is not PEM certificates", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                bail!("{} holds no usable certificate", path.display());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

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
