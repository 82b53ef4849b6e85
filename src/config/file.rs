//! The configuration file: TOML in (any subset of the keys), TOML out (`--print-config`).
//!
//! What is printed parses back to the same configuration, except the access tokens: they are
//! never printed, so they are written as comments (`# auth_token = "<redacted>"`) under a note
//! saying so. Fed back, the printout has no tokens (beyond loopback the broker then refuses to
//! start unless `allow_unauthenticated`); uncommented without the real token, validation refuses
//! the placeholder (`ConfigError::RedactedToken`).

use std::fmt::Write as _;
use std::path::Path;

use super::{BrokerConfig, ConfigError};
use crate::auth::REDACTED;

impl BrokerConfig {
    /// Parses a (possibly partial) TOML configuration; missing keys keep their defaults.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] naming `path` (used only for the message).
    pub fn from_toml(text: &str, path: &Path) -> Result<BrokerConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a TOML file.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Parse`].
    pub fn from_file(path: &Path) -> Result<BrokerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        BrokerConfig::from_toml(&text, path)
    }

    /// The configuration as TOML, every key present (the TLS files when set), what
    /// `--print-config` shows. Tokens, when set, come last, commented out (see the module docs).
    pub fn to_toml(&self) -> String {
        // The token fields are `skip_serializing`; every other field is a scalar, a path or a
        // string, which TOML always represents, so this cannot fail.
        let mut text = toml::to_string(self).unwrap_or_default();
        if !self.has_tokens() {
            return text;
        }
        text.push_str(
            "\n# Access tokens are never printed. Set them again (here, or with --auth-token and\n\
             # --channel-token): a token left as \"<redacted>\" is refused.\n",
        );
        if self.auth_token.is_some() {
            // Writing to a String cannot fail.
            let _ = writeln!(text, "# auth_token = \"{REDACTED}\"");
        }
        if !self.channel_tokens.is_empty() {
            text.push_str("# [channel_tokens]\n");
            for channel in self.channel_tokens.keys() {
                let _ = writeln!(text, "# {channel:?} = \"{REDACTED}\"");
            }
        }
        text
    }
}
