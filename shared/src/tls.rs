//! The one TLS client configuration used for every backend connection (HTTPS and, later,
//! WSS): rustls with the ring provider, Mozilla's roots, and an optional extra CA file for
//! self-hosted backends.
//!
//! ring rather than rustls' default aws-lc: aws-lc is a C build that adds ~50 s to a clean
//! build and ~2 MB to each binary, which matters on a Pi's storage and for cross builds.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::{self, PemObject};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA file {}: {source}", path.display())]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {} is not valid PEM: {source}", path.display())]
    BadPem {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("CA file {} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("CA file {} has a certificate rustls rejects: {source}", path.display())]
    BadCertificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot set up TLS: {0}")]
    Setup(#[source] rustls::Error),
}

/// A rustls client config trusting Mozilla's roots plus every certificate in `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| TlsError::ReadCa {
            path: path.to_owned(),
            source,
        })?;
        // rustls' own PEM parser (the rustls-pemfile crate is archived).
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|source| TlsError::BadPem {
                path: path.to_owned(),
                source,
            })?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate {
                path: path.to_owned(),
            });
        }
        for cert in certs {
            roots.add(cert).map_err(|source| TlsError::BadCertificate {
                path: path.to_owned(),
                source,
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_builds() {
        assert!(client_config(None).is_ok());
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = client_config(Some(&missing)).unwrap_err();
        assert!(matches!(err, TlsError::ReadCa { .. }));
        assert!(err.to_string().contains("missing.pem"));

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(matches!(
            client_config(Some(&empty)).unwrap_err(),
            TlsError::NoCertificate { .. }
        ));
    }

    #[test]
    fn a_generated_ca_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, cert.cert.pem()).unwrap();
        assert!(client_config(Some(&path)).is_ok());
    }
}
