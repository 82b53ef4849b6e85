//! TLS settings: binding with a bad certificate file is a typed error naming it, and the binary
//! refuses bad TLS settings with exit code 2 naming the key or file.
//!
//! Every test ends with the broker idle. No sleeps: blocking calls with deadlines and the
//! broker's event-driven `wait_until`. Fixtures (certificates made at test time with rcgen, a
//! broker with a plain and a TLS listener): `switchyard_testkit::tls`.

use std::process::Command;
use switchyard_testkit::{
    broker,
    tls::{config, Certs},
};

use switchyard::server::{Server, TlsListenerConfig};
use switchyard::tls::TlsConfigError;

// ----- configuration -----------------------------------------------------------------------------

#[test]
fn binding_with_a_bad_certificate_file_is_a_typed_error_naming_it() {
    let certs = Certs::new("bind");
    let mut config = config(&certs);
    let missing = certs.dir().join("missing.crt");
    config.tls = Some(TlsListenerConfig {
        cert_path: missing.clone(),
        ..certs.listener(broker::any_port())
    });
    let err = Server::bind(config.clone()).err().expect("refused");
    let typed = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<TlsConfigError>())
        .expect("a TlsConfigError inside");
    assert!(
        matches!(typed, TlsConfigError::Read { path, .. } if *path == missing),
        "{typed:?}"
    );
    assert!(err.to_string().contains("missing.crt"), "{err}");

    config.tls = Some(TlsListenerConfig {
        key_path: certs.cert.clone(),
        ..certs.listener(broker::any_port())
    });
    let err = Server::bind(config).err().expect("refused");
    assert!(err.to_string().contains("broker.crt"), "{err}");
    assert!(
        matches!(
            err.get_ref()
                .and_then(|e| e.downcast_ref::<TlsConfigError>()),
            Some(TlsConfigError::NoKey { .. })
        ),
        "{err:?}"
    );
}

/// Runs the binary with `args` (and `--print-config`), returning its exit code and output.
fn run_binary(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .arg("--print-config")
        .output()
        .expect("run the broker binary");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_binary_refuses_bad_tls_settings_with_exit_code_2() {
    let certs = Certs::new("binary");
    let cert = certs.cert.to_str().unwrap();
    let key = certs.key.to_str().unwrap();
    let missing = certs.dir().join("missing.crt");
    let missing = missing.to_str().unwrap();

    let (code, _, stderr) = run_binary(&[
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        missing,
        "--tls-key",
        key,
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("missing.crt"), "{stderr}");

    let (code, _, stderr) = run_binary(&["--tls-key", key]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("`tls_key` (--tls-key)"), "{stderr}");

    let (code, _, stderr) = run_binary(&["--tls-listen", "127.0.0.1:0", "--tls-cert", cert]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("`tls_key` (--tls-key) is required"),
        "{stderr}"
    );

    let (code, stdout, stderr) = run_binary(&[
        "--tls-listen",
        "127.0.0.1:7443",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("tls_listen = \"127.0.0.1:7443\""),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("tls_cert = {cert:?}")), "{stdout}");
    assert!(stdout.contains(&format!("tls_key = {key:?}")), "{stdout}");
}

// ----- certificate validity ----------------------------------------------------------------------

/// A broker started with an expired certificate says so at start-up (a warning naming the file
/// and the date), and one with a current certificate does not.
#[test]
fn the_binary_warns_at_start_up_about_an_expired_certificate() {
    use switchyard_testkit::{process::BrokerProcess, Scratch, DEADLINE};
    let scratch = Scratch::new("expired-cert");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = scratch.file("old.crt", &params.self_signed(&key).unwrap().pem());
    let key = scratch.file("old.key", &key.serialize_pem());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mut old = BrokerProcess::start(
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ],
        None,
    );
    let line = old.wait_line("TLS certificate", DEADLINE);
    assert!(
        line.contains("WARN") && line.contains("expired") && line.contains("2021"),
        "{line}"
    );
    assert!(line.contains("old.crt"), "{line}");
    old.kill();

    let (cert, key) = scratch.self_signed("current");
    let mut current = BrokerProcess::start(
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        None,
    );
    // Both brokers log "listening on" after loading the certificate: by then a warning would be
    // in the log.
    assert!(current.lines("TLS certificate").is_empty());
    current.kill();
}
