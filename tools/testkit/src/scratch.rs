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
            "switchyard-tls-{name}-{}-{}",
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

    /// A self-signed certificate for `localhost` and its key, as PEM files `NAME.crt` and
    /// `NAME.key`.
    pub fn self_signed(&self, name: &str) -> (PathBuf, PathBuf) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (
            self.file(&format!("{name}.crt"), &made.cert.pem()),
            self.file(&format!("{name}.key"), &made.signing_key.serialize_pem()),
        )
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
