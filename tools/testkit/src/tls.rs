//! TLS fixtures: a broker certificate made at test time, a broker with a plain and a TLS
//! listener, and clients on either transport.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use switchyard::client::{Client, ClientOptions, ClientTls};
use switchyard::ids::ChannelId;
use switchyard::server::{ServerConfig, ServerHandle, TlsListenerConfig};

use crate::{broker, Scratch};

/// A self-signed certificate for `localhost` and 127.0.0.1 with its key, as PEM files in a
/// scratch directory removed on drop: `broker.crt` and `broker.key` ([`Scratch::self_signed`]).
pub struct Certs {
    /// The certificate (PEM), also the CA file a client trusts.
    pub cert: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
    dir: Scratch,
}

impl Certs {
    /// A new certificate (`name` names the directory); no two fixtures trust each other.
    pub fn new(name: &str) -> Certs {
        let dir = Scratch::new(name);
        let (cert, key) = dir.self_signed("broker");
        Certs { cert, key, dir }
    }

    /// The scratch directory holding the files (for paths that must not exist, say).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// The client side: trusts this certificate, verifies the name `localhost`.
    pub fn trust(&self) -> ClientTls {
        ClientTls::from_ca_file(&self.cert)
            .expect("the CA file")
            .server_name("localhost")
            .expect("a DNS name")
    }

    /// The broker side: a TLS listener on `listen` with this certificate.
    pub fn listener(&self, listen: SocketAddr) -> TlsListenerConfig {
        TlsListenerConfig {
            listen,
            cert_path: self.cert.clone(),
            key_path: self.key.clone(),
        }
    }
}

/// The default test configuration ([`broker::config`]) with a TLS listener on `127.0.0.1:0`.
pub fn config(certs: &Certs) -> ServerConfig {
    ServerConfig {
        tls: Some(certs.listener(broker::any_port())),
        ..broker::config()
    }
}

/// A broker in a thread with [`config`].
pub fn start(certs: &Certs) -> ServerHandle {
    broker::start_with(config(certs))
}

/// The broker's TLS listening address.
///
/// # Panics
/// When the broker has no TLS listener.
pub fn tls_addr(handle: &ServerHandle) -> SocketAddr {
    handle.tls_addr().expect("the broker has a TLS listener")
}

/// Client options for TLS (`tls`) or plain TCP (`None`), no reconnection.
pub fn options(tls: Option<ClientTls>) -> ClientOptions {
    ClientOptions {
        tls,
        reconnect: None,
        ..ClientOptions::default()
    }
}

/// A client on the TLS listener, trusting `certs`, joined to `channel`.
#[track_caller]
pub fn connect_tls(handle: &ServerHandle, channel: ChannelId, certs: &Certs) -> Client {
    Client::connect_with(tls_addr(handle), channel, options(Some(certs.trust())))
        .expect("a TLS client joins")
}

/// A client on the plain listener, without reconnection, joined to `channel`.
#[track_caller]
pub fn connect_plain(handle: &ServerHandle, channel: ChannelId) -> Client {
    Client::connect_with(handle.local_addr(), channel, options(None)).expect("a plain client joins")
}
