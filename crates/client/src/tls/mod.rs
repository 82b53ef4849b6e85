//! The client's TLS option ([`ClientTls`]): which certificates to trust and which name to verify.
//!
//! The rustls configuration is built once, when the option is made, and shared (`Arc`) by every
//! connection of the client, reconnects included; a connection only adds its own session.
//!
//! [`files`] holds what the broker shares with the client: the crypto provider, PEM loading and
//! [`TlsConfigError`].

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConnection, RootCertStore};

pub mod files;

pub use files::{load_certificates, load_private_key, provider, TlsConfigError};

/// rustls' per-connection buffer limit on the client: plaintext taken per lock of the session
/// when a frame is encrypted (the records are then written outside that lock), and records held
/// before the handshake completes.
pub(crate) const BUFFER_LIMIT: usize = 64 * 1024;

/// TLS for a client ([`ClientOptions::tls`](super::ClientOptions::tls)): the certificates it
/// trusts and the name the broker's certificate must carry.
///
/// The name defaults to the IP address the client connects to (the certificate then needs that
/// IP address as a subject alternative name); set [`ClientTls::server_name`] to verify a DNS name
/// such as `localhost` or `broker.example.com`. (The client's address parameter is an opaque
/// [`ToSocketAddrs`](std::net::ToSocketAddrs), so the host name it was written with is not
/// known to it.)
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the CA certificates (or self-signed broker certificates) of a PEM file.
    ///
    /// # Errors
    /// A [`TlsConfigError`] naming the file: unreadable, not PEM, no certificate in it, or a
    /// certificate rustls cannot use as a trust anchor.
    pub fn from_ca_file(path: impl AsRef<Path>) -> Result<ClientTls, TlsConfigError> {
        let path = path.as_ref();
        let certs = load_certificates(path)?;
        ClientTls::trusting(certs, Some(path))
    }

    /// Trusts the given DER-encoded certificates.
    ///
    /// # Errors
    /// [`TlsConfigError::BadCaCertificate`] for a certificate rustls cannot use as a trust
    /// anchor (`path: None`).
    pub fn from_ca_der(
        certs: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<ClientTls, TlsConfigError> {
        ClientTls::trusting(certs.into_iter().collect(), None)
    }

    /// Uses a rustls configuration of the application's own (client certificates, other
    /// verifiers). It should not enable early data (0-RTT): a HELLO replayed by an attacker
    /// would join the channel.
    pub fn from_config(config: Arc<rustls::ClientConfig>) -> ClientTls {
        ClientTls {
            config,
            server_name: None,
        }
    }

    fn trusting(
        certs: Vec<CertificateDer<'static>>,
        path: Option<&Path>,
    ) -> Result<ClientTls, TlsConfigError> {
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|error| TlsConfigError::BadCaCertificate {
                    path: path.map(Path::to_owned),
                    error,
                })?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsConfigError::Rustls)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls::from_config(Arc::new(config)))
    }

    /// Verifies the broker's certificate for `name` (a DNS name or an IP address) instead of the
    /// IP address connected to.
    ///
    /// # Errors
    /// [`TlsConfigError::BadServerName`] when `name` is neither.
    pub fn server_name(mut self, name: &str) -> Result<ClientTls, TlsConfigError> {
        let parsed =
            ServerName::try_from(name.to_owned()).map_err(|_| TlsConfigError::BadServerName {
                name: name.to_owned(),
            })?;
        self.server_name = Some(parsed);
        Ok(self)
    }

    /// A new session for a connection to `addr`.
    pub(crate) fn session(&self, addr: SocketAddr) -> Result<ClientConnection, rustls::Error> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let mut conn = ClientConnection::new(Arc::clone(&self.config), name)?;
        conn.set_buffer_limit(Some(BUFFER_LIMIT));
        Ok(conn)
    }
}
