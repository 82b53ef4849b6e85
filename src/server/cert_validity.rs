//! The validity period of the broker's own certificate, checked once at start-up.
//!
//! rustls checks the certificates of the peers it verifies, never the one it serves: a broker
//! started with an expired (or not yet valid) certificate would run, and every client that
//! verifies it would fail its TLS handshake with nothing in the broker's log but one line per
//! refused connection. [`check`] reads the leaf certificate's `notBefore`/`notAfter` with
//! `x509-parser`; [`TlsListenerConfig::load`](super::TlsListenerConfig::load) logs a warning
//! when the certificate is outside its period. A warning, not a refusal: the clock may be wrong,
//! and clients that do not verify (tests, pinned keys) still work.

use std::fmt;

/// The leaf certificate compared with the current time.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) enum Validity {
    /// `notBefore <= now <= notAfter`.
    Valid,
    /// `now > notAfter`.
    Expired {
        /// `notAfter`, as the certificate says it.
        not_after: String,
    },
    /// `now < notBefore`.
    NotYetValid {
        /// `notBefore`, as the certificate says it.
        not_before: String,
    },
    /// The DER does not parse as an X.509 certificate (rustls accepted it as opaque bytes; the
    /// handshake will tell).
    Unreadable(String),
}

impl fmt::Display for Validity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Validity::Valid => f.write_str("valid"),
            Validity::Expired { not_after } => write!(f, "expired (not after {not_after})"),
            Validity::NotYetValid { not_before } => {
                write!(f, "not yet valid (not before {not_before})")
            }
            Validity::Unreadable(why) => write!(f, "unreadable ({why})"),
        }
    }
}

/// The validity of the DER certificate `der` at `now_unix` (seconds since the Unix epoch).
pub(crate) fn check(der: &[u8], now_unix: i64) -> Validity {
    let cert = match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => cert,
        Err(e) => return Validity::Unreadable(e.to_string()),
    };
    let validity = cert.validity();
    if now_unix < validity.not_before.timestamp() {
        Validity::NotYetValid {
            not_before: validity.not_before.to_string(),
        }
    } else if now_unix > validity.not_after.timestamp() {
        Validity::Expired {
            not_after: validity.not_after.to_string(),
        }
    } else {
        Validity::Valid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    /// 2025-01-01T00:00:00Z.
    const NOW: i64 = 1_735_689_600;

    #[test]
    fn a_certificate_is_checked_against_both_ends_of_its_period() {
        assert_eq!(
            check(&cert((2024, 1, 1), (2026, 1, 1)), NOW),
            Validity::Valid
        );
        let expired = check(&cert((2020, 1, 1), (2024, 6, 1)), NOW);
        assert!(matches!(expired, Validity::Expired { .. }), "{expired}");
        assert!(expired.to_string().contains("2024"), "{expired}");
        let early = check(&cert((2025, 6, 1), (2027, 1, 1)), NOW);
        assert!(matches!(early, Validity::NotYetValid { .. }), "{early}");
        assert!(matches!(check(b"not der", NOW), Validity::Unreadable(_)));
    }
}
