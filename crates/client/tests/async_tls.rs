//! The async client over TLS (features `tokio` and `tls`): the broker's TLS listener with a
//! certificate made at test time, a large body both ways, and an untrusted certificate refused.
#![cfg(all(feature = "tokio", feature = "tls"))]

mod support;

use std::path::PathBuf;

use switchyard::server::{Server, ServerConfig, ServerHandle, TlsListenerConfig};
use switchyard_client::{AsyncClient, ChannelId, ClientOptions, ClientTls, Error};

use support::*;

/// A directory of its own for one test's PEM files, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-client-{name}-{}-{}",
            std::process::id(),
            ChannelId::random()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    /// A self-signed certificate for `localhost` and its key, as PEM files.
    fn certificate(&self, name: &str) -> (PathBuf, PathBuf) {
        let made =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let cert = self.0.join(format!("{name}.crt"));
        let key = self.0.join(format!("{name}.key"));
        std::fs::write(&cert, made.cert.pem()).expect("write cert");
        std::fs::write(&key, made.signing_key.serialize_pem()).expect("write key");
        (cert, key)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tls_broker(cert: PathBuf, key: PathBuf) -> ServerHandle {
    Server::spawn(ServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        tls: Some(TlsListenerConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            cert_path: cert,
            key_path: key,
        }),
        ..ServerConfig::default()
    })
    .expect("spawn the TLS broker")
}

fn trusting(cert: &PathBuf) -> ClientOptions {
    let tls = ClientTls::from_ca_file(cert)
        .expect("CA file")
        .server_name("localhost")
        .expect("name");
    ClientOptions {
        tls: Some(tls),
        ..ClientOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_over_tls_is_byte_exact() {
    let scratch = Scratch::new("tls");
    let (cert, key) = scratch.certificate("broker");
    let broker = tls_broker(cert.clone(), key);
    let addr = broker.tls_addr().expect("TLS listener");
    let channel = ChannelId::random();
    let worker = AsyncClient::connect_with(addr, channel, trusting(&cert))
        .await
        .expect("worker over TLS");
    let sender = AsyncClient::connect_with(addr, channel, trusting(&cert))
        .await
        .expect("sender over TLS");
    set_window(&worker, 1).await;
    let serving = tokio::spawn(async move {
        let mut request = worker.next_request(WAIT).await.expect("a request");
        let body = request.body().await.expect("body");
        assert!(body == pattern(3 << 20, 7), "request body differs");
        request.respond(pattern(4 << 20, 8)).await.expect("respond");
        // Kept until the reply is read, so the connection is not closed under it.
        worker
    });
    let reply = sender
        .request(pattern(3 << 20, 7), WAIT)
        .await
        .expect("reply over TLS");
    assert!(reply == pattern(4 << 20, 8), "reply differs");
    serving.await.expect("worker task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused() {
    let scratch = Scratch::new("tls-untrusted");
    let (cert, key) = scratch.certificate("broker");
    let (other, _) = scratch.certificate("other");
    let broker = tls_broker(cert, key);
    let addr = broker.tls_addr().expect("TLS listener");
    let result = AsyncClient::connect_with(addr, ChannelId::random(), trusting(&other)).await;
    assert!(matches!(result, Err(Error::Tls(_))), "{result:?}");
}
