//! Scratch directories and self-signed certificates made at test time (no key material is
//! committed).

use std::path::PathBuf;

/// A unique scratch directory under the system's temp dir, removed on drop.
pub struct Scratch(
    /// The directory.
    pub PathBuf,
);

impl Scratch {
    /// A new directory; `name` makes it recognisable.
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-test-{name}-{}-{}",
            std::process::id(),
            switchyard::ids::RequestId::random()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// Writes `text` to the file `name` of the directory.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A self-signed certificate for `localhost` and 127.0.0.1 (an IP address entry: a client
    /// may verify the address it dials) and its key, as PEM files `NAME.crt` and `NAME.key`. The
    /// subject names the file and this directory, so no two certificates share an issuer name.
    pub fn self_signed(&self, name: &str) -> (PathBuf, PathBuf) {
        let dir = self.0.file_name().unwrap_or_default().to_string_lossy();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("certificate parameters");
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("switchyard test {name} ({dir})"),
        );
        let key_pair = rcgen::KeyPair::generate().expect("a key pair");
        let made = params
            .self_signed(&key_pair)
            .expect("a self-signed certificate");
        (
            self.file(&format!("{name}.crt"), &made.pem()),
            self.file(&format!("{name}.key"), &key_pair.serialize_pem()),
        )
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
