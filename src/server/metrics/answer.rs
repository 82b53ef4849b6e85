//! What the endpoint answers: which resource a request names, and the bytes of a
//! `Connection: close` answer (full, or the head alone for HEAD).

use bytes::Bytes;
use std::fmt::Write as _;

/// What a complete request asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Asked {
    /// `/metrics`: the exposition.
    Metrics,
    /// `/healthz`: the loop runs (it answers).
    Health,
    /// `/readyz`: listening and not shutting down.
    Ready,
}

impl Asked {
    pub(super) fn from_path(path: &str) -> Option<Asked> {
        match path {
            "/metrics" => Some(Asked::Metrics),
            "/healthz" => Some(Asked::Health),
            "/readyz" => Some(Asked::Ready),
            _ => None,
        }
    }
}

/// The exposition format's content type (text format 0.0.4).
pub(super) const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// The head of a `Connection: close` answer to HEAD: what GET would get, without the body;
/// `Content-Length` only when the body's length is known without rendering it.
pub(super) fn head_only(status: &str, content_type: &str, length: Option<usize>) -> Bytes {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n");
    if let Some(length) = length {
        let _ = write!(head, "Content-Length: {length}\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    Bytes::from(head.into_bytes())
}

/// A complete `Connection: close` answer.
pub(super) fn response(
    status: &str,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> Bytes {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    head.push_str("\r\n");
    let mut answer = Vec::with_capacity(head.len() + body.len());
    answer.extend_from_slice(head.as_bytes());
    answer.extend_from_slice(body.as_bytes());
    Bytes::from(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_complete_connection_close_responses() {
        let answer = response("404 Not Found", "text/plain", &[], "nope\n");
        let text = std::str::from_utf8(&answer).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Content-Length: 5\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nnope\n"), "{text}");
    }
}
