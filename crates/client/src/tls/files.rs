//! TLS pieces shared by the broker and the client: the crypto provider, PEM loading of
//! certificates and keys, and [`TlsConfigError`], the typed reason a TLS configuration was
//! refused. The broker's TLS listener uses them from here, so both ends load files alike.
//!
//! # Invariants
//! - Every rustls configuration is built with `provider()` (rustls' `ring` provider), passed
//!   explicitly: nothing depends on a process-wide default provider being installed, so an
//!   application that installs another one (or none) gets the same behaviour.
//! - Files are read and parsed once, when a configuration is built (the broker's bind, the
//!   client's [`ClientTls`](crate::tls::ClientTls) constructor), never on a connection's
//!   path. Every error names the file it is about.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The crypto provider of every rustls configuration this crate builds: `ring`.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a TLS configuration could not be built. Each variant names the file involved.
#[non_exhaustive]
#[derive(Debug)]
pub enum TlsConfigError {
    /// The file could not be opened or read (missing, permissions, ...).
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: io::Error,
    },
    /// The file is not valid PEM.
    Pem {
        /// The file.
        path: PathBuf,
        /// The parser's explanation.
        message: String,
    },
    /// The file holds no `CERTIFICATE` section.
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The file holds no private key (`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`).
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key does not belong to the certificate (or is of a kind the provider cannot use).
    KeyMismatch {
        /// The certificate file.
        cert_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
        /// rustls' explanation.
        error: rustls::Error,
    },
    /// A certificate could not be used as a trust anchor (client side).
    BadCaCertificate {
        /// The file it came from (`None`: given as DER bytes).
        path: Option<PathBuf>,
        /// rustls' explanation.
        error: rustls::Error,
    },
    /// Any other refusal of rustls while building the configuration.
    Rustls(rustls::Error),
    /// The server name given for certificate verification is neither a DNS name nor an IP
    /// address.
    BadServerName {
        /// The name given.
        name: String,
    },
}

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsConfigError::Read { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
            TlsConfigError::Pem { path, message } => {
                write!(f, "{} is not valid PEM: {message}", path.display())
            }
            TlsConfigError::NoCertificate { path } => {
                write!(
                    f,
                    "no certificate (CERTIFICATE section) in {}",
                    path.display()
                )
            }
            TlsConfigError::NoKey { path } => {
                write!(
                    f,
                    "no private key (PRIVATE KEY section) in {}",
                    path.display()
                )
            }
            TlsConfigError::KeyMismatch {
                cert_path,
                key_path,
                error,
            } => write!(
                f,
                "the key in {} does not fit the certificate in {}: {error}",
                key_path.display(),
                cert_path.display()
            ),
            TlsConfigError::BadCaCertificate { path, error } => match path {
                Some(path) => write!(f, "unusable CA certificate in {}: {error}", path.display()),
                None => write!(f, "unusable CA certificate: {error}"),
            },
            TlsConfigError::Rustls(error) => write!(f, "TLS configuration refused: {error}"),
            TlsConfigError::BadServerName { name } => {
                write!(f, "{name:?} is neither a DNS name nor an IP address")
            }
        }
    }
}

impl std::error::Error for TlsConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsConfigError::Read { error, .. } => Some(error),
            TlsConfigError::KeyMismatch { error, .. }
            | TlsConfigError::BadCaCertificate { error, .. }
            | TlsConfigError::Rustls(error) => Some(error),
            _ => None,
        }
    }
}

impl From<TlsConfigError> for io::Error {
    /// For the broker's bind, which reports `io::Error`: the typed error stays inside (recover
    /// it with `get_ref()` + `downcast_ref::<TlsConfigError>()`).
    fn from(error: TlsConfigError) -> io::Error {
        let kind = match &error {
            TlsConfigError::Read { error, .. } => error.kind(),
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, error)
    }
}

fn pem_error(path: &Path, error: pem::Error) -> TlsConfigError {
    match error {
        pem::Error::Io(error) => TlsConfigError::Read {
            path: path.to_owned(),
            error,
        },
        other => TlsConfigError::Pem {
            path: path.to_owned(),
            message: other.to_string(),
        },
    }
}

/// Every `CERTIFICATE` section of the PEM file at `path`, in order (at least one).
///
/// # Errors
/// [`TlsConfigError::Read`], [`TlsConfigError::Pem`], [`TlsConfigError::NoCertificate`].
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of the PEM file at `path`.
///
/// # Errors
/// [`TlsConfigError::Read`], [`TlsConfigError::Pem`], [`TlsConfigError::NoKey`].
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    match PrivateKeyDer::from_pem_file(path) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(TlsConfigError::NoKey {
            path: path.to_owned(),
        }),
        Err(e) => Err(pem_error(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_testkit::Scratch;

    #[test]
    fn loading_errors_name_the_file_and_the_problem() {
        let dir = Scratch::new("load");
        let missing = dir.0.join("missing.pem");
        let err = load_certificates(&missing).unwrap_err();
        assert!(matches!(err, TlsConfigError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let empty = dir.file("empty.pem", "nothing in PEM here\n");
        let err = load_certificates(&empty).unwrap_err();
        assert!(
            matches!(&err, TlsConfigError::NoCertificate { path } if *path == empty),
            "{err:?}"
        );
        let err = load_private_key(&empty).unwrap_err();
        assert!(
            matches!(&err, TlsConfigError::NoKey { path } if *path == empty),
            "{err:?}"
        );
        assert!(err.to_string().contains("empty.pem"), "{err}");

        let broken = dir.file(
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        );
        let err = load_certificates(&broken).unwrap_err();
        assert!(matches!(err, TlsConfigError::Pem { .. }), "{err:?}");
        assert!(err.to_string().contains("broken.pem"), "{err}");

        let as_io: io::Error = TlsConfigError::NoKey {
            path: empty.clone(),
        }
        .into();
        assert_eq!(as_io.kind(), io::ErrorKind::InvalidInput);
        assert!(as_io
            .get_ref()
            .and_then(|e| e.downcast_ref::<TlsConfigError>())
            .is_some());
    }
}
