//! `--tls`: the client-library clients speak TLS to the broker's TLS listener, the raw-protocol
//! clients stay on plain TCP, on the same channels — so one run mixes both transports, and every
//! check (bodies byte for byte, at most one answer, PEER_GONE for a killed receiver, state back
//! to zero, RSS) covers the TLS path too.
//!
//! The parent generates a self-signed certificate for `localhost` and 127.0.0.1 (rcgen, a
//! dev-dependency; the test kit's `tls::Certs`) into a temporary directory of its own, which
//! `Certs` removes on drop —
//! on success, on an error return and on a panic; the watchdog, which exits the process without
//! unwinding, removes it itself ([`remove_dir`]). The broker role reads the certificate and key
//! from there (`--tls-cert`, `--tls-key`); the parent's clients and the receiver child
//! processes (`--tls-ca`) trust that certificate alone. They verify the IP address they
//! connect to (the client library's default), which the certificate carries.
//!
//! Invariant: every client-library connection of a `--tls` run is a TLS connection, and each
//! one is counted (`clients.tls_connects`) right after its handshake — so the broker's
//! `switchyard_tls_connections_opened_total` must equal that count plus the warm-up's, and
//! `switchyard_tls_handshake_failures_total` must be zero (no client of the soak gives up
//! during a handshake: receiver children are killed only after their WELCOME).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use switchyard::client::{ClientOptions, ClientTls};
use switchyard::server::TLS_BUFFER_LIMIT;

/// What the broker may keep resident per TLS connection at its peak, beyond what plain
/// connections keep (see `RssBound` in main.rs), KiB. The buffers are freed when the connection
/// closes, but like the rest of the broker's heap they may stay resident (glibc keeps holes),
/// so the bound allows for the peak number of TLS connections open at once:
/// - rustls' buffer limit of encrypted records not yet written ([`TLS_BUFFER_LIMIT`], 64 KiB:
///   the broker's `TlsWriter` lets rustls encrypt at most that much behind the router's queue);
/// - rustls' per-record buffers: the incoming ciphertext it deframes (one record, up to
///   16 KiB + 2 KiB of overhead; handshake messages are joined up to 64 KiB while
///   handshaking), the decrypted plaintext of one record (16 KiB; the broker drains it after
///   every record), and the session itself (keys, transcript, the peer's state): 64 KiB in all,
///   rounded up generously from the handshake's worst case.
pub const ALLOWANCE_PER_CONNECTION_KIB: u64 = TLS_BUFFER_LIMIT as u64 / 1024 + 64;

/// Removes the certificate directory (best effort: a failure leaves a temporary directory).
pub fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("soak: could not remove {}: {e}", dir.display());
        }
    }
}

/// Where and how the client-library clients (in this process and in receiver children)
/// connect: the plain listener, or the TLS listener trusting the soak's certificate.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub tls: Option<Trust>,
}

/// The certificate a TLS client trusts: its file (handed to receiver children) and the client
/// configuration made from it.
#[derive(Clone, Debug)]
pub struct Trust {
    pub ca_path: PathBuf,
    pub client: ClientTls,
}

impl Endpoint {
    pub fn plain(addr: SocketAddr) -> Endpoint {
        Endpoint { addr, tls: None }
    }

    /// The TLS listener at `addr`, trusting the certificate in `ca_path`.
    pub fn tls(addr: SocketAddr, ca_path: &Path) -> Result<Endpoint, String> {
        let client = ClientTls::from_ca_file(ca_path).map_err(|e| e.to_string())?;
        Ok(Endpoint {
            addr,
            tls: Some(Trust {
                ca_path: ca_path.to_owned(),
                client,
            }),
        })
    }

    /// The soak's client options: no reconnection (a dropped connection is a failure here, not
    /// something to ride out), and TLS when this endpoint is the TLS listener.
    pub fn options(&self) -> ClientOptions {
        ClientOptions {
            reconnect: None,
            tls: self.tls.as_ref().map(|t| t.client.clone()),
            ..ClientOptions::default()
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}
