//! Failure classification: turns the errors of each probe step into a [`Failure`] with a kind an
//! operator can alert on and a short human message.
//!
//! Everything here is a pure function of error facts (io kinds, OpenSSL and hyper messages), so
//! the tables below test it without a network.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use url::Url;

use super::body::DecodeError;
use crate::result::{shorten, Failure, FailureKind, Phase};

fn failure(kind: FailureKind, message: String) -> Failure {
    Failure {
        kind,
        phase: None,
        message,
    }
}

/// The name lookup failed.
pub(crate) fn dns(host: &str, err: &io::Error) -> Failure {
    let text = err.to_string();
    let reason = text
        .strip_prefix("failed to lookup address information: ")
        .unwrap_or(&text);
    failure(
        FailureKind::Dns,
        format!("cannot resolve {host}: {}", human_os_message(reason)),
    )
}

/// The name resolved to nothing.
pub(crate) fn no_addresses(host: &str) -> Failure {
    failure(FailureKind::Dns, format!("no addresses found for {host}"))
}

/// No address accepted a TCP connection; `err` is the last address's error, `others` how many
/// more addresses failed before it.
pub(crate) fn connect(addr: SocketAddr, err: &io::Error, others: usize) -> Failure {
    let base = match err.kind() {
        io::ErrorKind::ConnectionRefused => format!("connection refused to {addr}"),
        io::ErrorKind::ConnectionReset => format!("connection reset by {addr}"),
        io::ErrorKind::ConnectionAborted => format!("connection aborted to {addr}"),
        io::ErrorKind::TimedOut => format!("connection to {addr} timed out"),
        io::ErrorKind::AddrNotAvailable => {
            format!("cannot connect to {addr}: address not available")
        }
        _ => format!(
            "cannot connect to {addr}: {}",
            human_os_message(&err.to_string())
        ),
    };
    let message = match others {
        0 => base,
        1 => format!("{base} (and 1 other address failed)"),
        n => format!("{base} (and {n} other addresses failed)"),
    };
    failure(FailureKind::Connect, message)
}

/// The site's TLS options could not be turned into a connector (bad PEM, key mismatch).
pub(crate) fn tls_config(text: &str) -> Failure {
    failure(FailureKind::Tls, format!("invalid TLS options: {text}"))
}

/// The TLS handshake failed; `text` is the TLS library's error message.
pub(crate) fn tls_handshake(host: &str, text: &str) -> Failure {
    let lower = text.to_ascii_lowercase();
    let message = match tls_reason(&lower) {
        Some(TlsReason::HostMismatch) => format!("certificate does not match host {host}"),
        Some(reason) => reason.message().to_owned(),
        None if is_closed_text(&lower) => "connection closed during TLS handshake".to_owned(),
        None => format!("TLS handshake failed: {}", openssl_reason(text)),
    };
    failure(FailureKind::Tls, message)
}

/// What TLS went wrong, read from an OpenSSL message (lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsReason {
    Expired,
    NotYetValid,
    Revoked,
    SelfSigned,
    SelfSignedInChain,
    Untrusted,
    HostMismatch,
    ClientCertRequired,
    ClientCertRejected,
    HandshakeAlert,
    NotTls,
    ProtocolVersion,
}

impl TlsReason {
    fn message(self) -> &'static str {
        match self {
            TlsReason::Expired => "certificate has expired",
            TlsReason::NotYetValid => "certificate is not yet valid",
            TlsReason::Revoked => "certificate has been revoked",
            TlsReason::SelfSigned => "self-signed certificate (untrusted)",
            TlsReason::SelfSignedInChain => "self-signed certificate in chain (untrusted)",
            TlsReason::Untrusted => "certificate is not trusted (unknown issuer)",
            TlsReason::HostMismatch => "certificate does not match host",
            TlsReason::ClientCertRequired => "server requires a client certificate",
            TlsReason::ClientCertRejected => "server rejected the client certificate",
            TlsReason::HandshakeAlert => {
                "server aborted the handshake (no shared protocol or cipher, or client certificate required)"
            }
            TlsReason::NotTls => "server does not speak TLS (wrong version number)",
            TlsReason::ProtocolVersion => "no TLS version in common with the server",
        }
    }
}

/// Table from OpenSSL message fragments to reasons; the first match wins, so the more specific
/// fragment comes first. OpenSSL 1.1 writes "self signed", 3.x "self-signed".
const TLS_REASONS: &[(&str, TlsReason)] = &[
    ("certificate has expired", TlsReason::Expired),
    ("certificate is not yet valid", TlsReason::NotYetValid),
    ("certificate revoked", TlsReason::Revoked),
    (
        "self-signed certificate in certificate chain",
        TlsReason::SelfSignedInChain,
    ),
    (
        "self signed certificate in certificate chain",
        TlsReason::SelfSignedInChain,
    ),
    ("self-signed certificate", TlsReason::SelfSigned),
    ("self signed certificate", TlsReason::SelfSigned),
    ("hostname mismatch", TlsReason::HostMismatch),
    ("ip address mismatch", TlsReason::HostMismatch),
    (
        "unable to get local issuer certificate",
        TlsReason::Untrusted,
    ),
    ("unable to get issuer certificate", TlsReason::Untrusted),
    (
        "unable to verify the first certificate",
        TlsReason::Untrusted,
    ),
    ("certificate verify failed", TlsReason::Untrusted),
    ("alert certificate required", TlsReason::ClientCertRequired),
    ("alert bad certificate", TlsReason::ClientCertRejected),
    ("alert unknown ca", TlsReason::ClientCertRejected),
    ("alert certificate unknown", TlsReason::ClientCertRejected),
    ("alert handshake failure", TlsReason::HandshakeAlert),
    ("wrong version number", TlsReason::NotTls),
    ("packet length too long", TlsReason::NotTls),
    ("unsupported protocol", TlsReason::ProtocolVersion),
    ("alert protocol version", TlsReason::ProtocolVersion),
];

/// Whether a handshake error says the client rejected the server's certificate (expired,
/// untrusted, another host's): the server did present one, and its facts are worth reading.
pub(crate) fn certificate_rejected(text: &str) -> bool {
    matches!(
        tls_reason(&text.to_ascii_lowercase()),
        Some(
            TlsReason::Expired
                | TlsReason::NotYetValid
                | TlsReason::Revoked
                | TlsReason::SelfSigned
                | TlsReason::SelfSignedInChain
                | TlsReason::Untrusted
                | TlsReason::HostMismatch
        )
    )
}

pub(crate) fn tls_reason(lower: &str) -> Option<TlsReason> {
    TLS_REASONS
        .iter()
        .find(|(fragment, _)| lower.contains(fragment))
        .map(|&(_, reason)| reason)
}

/// Which part of the exchange an HTTP-level error interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Sending the request or waiting for the response head.
    Head,
    /// Reading the body.
    Body,
}

/// What the probe knows about an HTTP-level error, gathered from a `hyper::Error` chain.
#[derive(Debug, Clone, Default)]
pub(crate) struct ErrorFacts {
    pub(crate) parse: bool,
    pub(crate) incomplete: bool,
    /// The kind of the first `io::Error` in the source chain.
    pub(crate) io_kind: Option<io::ErrorKind>,
    /// The Display of every error in the chain, joined with ": ".
    pub(crate) text: String,
}

impl ErrorFacts {
    pub(crate) fn from_hyper(err: &hyper::Error) -> ErrorFacts {
        ErrorFacts::from_chain(err, err.is_parse(), err.is_incomplete_message())
    }

    fn from_chain(err: &dyn std::error::Error, parse: bool, incomplete: bool) -> ErrorFacts {
        let mut facts = ErrorFacts {
            parse,
            incomplete,
            io_kind: None,
            text: err.to_string(),
        };
        let mut source = err.source();
        while let Some(e) = source {
            if facts.io_kind.is_none() {
                facts.io_kind = e.downcast_ref::<io::Error>().map(io::Error::kind);
            }
            let text = e.to_string();
            // io::Error wrapping another error displays the same text as its source.
            if !facts.text.ends_with(&text) {
                facts.text.push_str(": ");
                facts.text.push_str(&text);
            }
            source = e.source();
        }
        facts
    }
}

/// An error while sending the request or reading the response. TLS alerts that arrive after
/// the handshake (TLS 1.3 servers reject a missing client certificate this way) are `Tls`;
/// everything else is `Http`.
pub(crate) fn http(stage: Stage, facts: &ErrorFacts) -> Failure {
    let lower = facts.text.to_ascii_lowercase();
    if let Some(reason) = tls_reason(&lower) {
        if reason != TlsReason::HostMismatch {
            return failure(FailureKind::Tls, reason.message().to_owned());
        }
    }
    let reset = matches!(
        facts.io_kind,
        Some(io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted)
    );
    let closed = facts.incomplete
        || matches!(facts.io_kind, Some(io::ErrorKind::UnexpectedEof))
        || is_closed_text(&lower);
    let message = match (stage, facts.parse, reset, closed) {
        (_, true, _, _) => format!("malformed response: {}", facts.text),
        (Stage::Head, _, true, _) => "connection reset before the response head".to_owned(),
        (Stage::Head, _, _, true) => "connection closed before the response head".to_owned(),
        (Stage::Body, _, true, _) => "connection reset mid-body".to_owned(),
        (Stage::Body, _, _, true) => "connection closed mid-body".to_owned(),
        (Stage::Head, _, _, _) => format!("request failed: {}", facts.text),
        (Stage::Body, _, _, _) => format!("error reading the body: {}", facts.text),
    };
    failure(FailureKind::Http, message)
}

/// The body's Content-Encoding could not be undone.
pub(crate) fn decode(err: &DecodeError) -> Failure {
    failure(
        FailureKind::Http,
        format!("invalid {} body: {}", err.encoding.name(), err.source),
    )
}

/// The attempt's deadline passed while `phase` was running.
pub(crate) fn timeout(phase: Phase, after: Duration) -> Failure {
    let during = match phase {
        Phase::Dns => "resolving the host name",
        Phase::Connect => "connecting",
        Phase::Tls => "in the TLS handshake",
        Phase::Ttfb => "waiting for the response head",
        Phase::Transfer => "reading the body",
    };
    Failure {
        kind: FailureKind::Timeout,
        phase: Some(phase),
        message: format!("timed out after {after:?} {during}"),
    }
}

/// A redirect pointed at a URL already visited.
pub(crate) fn redirect_loop(chain: &[Url], next: &Url) -> Failure {
    failure(
        FailureKind::RedirectLoop,
        format!("redirect loop: {}", chain_text(chain, next)),
    )
}

/// Following one more redirect would exceed the site's limit.
pub(crate) fn too_many_redirects(max: u32, chain: &[Url], next: &Url) -> Failure {
    failure(
        FailureKind::RedirectLoop,
        format!(
            "too many redirects (limit {max}): {}",
            chain_text(chain, next)
        ),
    )
}

/// A redirect whose Location cannot be followed.
pub(crate) fn bad_redirect(status: u16, location: &str, why: &str) -> Failure {
    let mut location = location.to_string();
    shorten(&mut location, MAX_QUOTED_URL);
    failure(
        FailureKind::Http,
        format!("cannot follow {status} redirect to {location:?}: {why}"),
    )
}

/// Longest URL quoted in a failure message, in bytes: the server chooses redirect targets.
const MAX_QUOTED_URL: usize = 256;
/// URLs of a long redirect chain named at each end of a failure message.
const CHAIN_ENDS: usize = 3;

/// `a -> b -> c`: the chain and the next URL; for a long chain its first and last
/// [`CHAIN_ENDS`] URLs, each cut to [`MAX_QUOTED_URL`] bytes, so a server cannot blow a result
/// up with a hundred huge Locations.
fn chain_text(chain: &[Url], next: &Url) -> String {
    let urls: Vec<&Url> = chain.iter().chain(std::iter::once(next)).collect();
    let quoted = |url: &Url| {
        let mut text = url.as_str().to_string();
        shorten(&mut text, MAX_QUOTED_URL);
        text
    };
    if urls.len() <= 2 * CHAIN_ENDS {
        return urls
            .iter()
            .map(|u| quoted(u))
            .collect::<Vec<_>>()
            .join(" -> ");
    }
    let head: Vec<String> = urls[..CHAIN_ENDS].iter().map(|u| quoted(u)).collect();
    let tail: Vec<String> = urls[urls.len() - CHAIN_ENDS..]
        .iter()
        .map(|u| quoted(u))
        .collect();
    format!(
        "{} -> ({} more) -> {}",
        head.join(" -> "),
        urls.len() - 2 * CHAIN_ENDS,
        tail.join(" -> ")
    )
}

fn is_closed_text(lower: &str) -> bool {
    lower.contains("unexpected eof")
        || lower.contains("end of file")
        || lower.contains("connection closed")
}

/// "Connection refused (os error 111)" → "connection refused".
fn human_os_message(text: &str) -> String {
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// "error:0A000086:SSL routines:func:certificate verify failed:file.c:1889:" → the reason field;
/// other texts unchanged.
fn openssl_reason(text: &str) -> &str {
    if let Some(rest) = text.strip_prefix("error:") {
        if let Some(reason) = rest.split(':').nth(3) {
            if !reason.is_empty() {
                return reason;
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFY: &str = "error:0A000086:SSL routines:tls_post_process_server_certificate:\
        certificate verify failed:../ssl/statem/statem_clnt.c:1889:";

    #[test]
    fn rejected_certificates() {
        let cases = [
            (format!("{VERIFY} (certificate has expired)"), true),
            (format!("{VERIFY} (self-signed certificate)"), true),
            (
                format!("{VERIFY} (unable to get local issuer certificate)"),
                true,
            ),
            (format!("{VERIFY} (Hostname mismatch)"), true),
            (format!("{VERIFY} (certificate is not yet valid)"), true),
            ("x:sslv3 alert handshake failure:y".to_owned(), false),
            ("x:tlsv13 alert certificate required:y".to_owned(), false),
            ("x:wrong version number:y".to_owned(), false),
            ("connection reset by peer".to_owned(), false),
        ];
        for (text, want) in cases {
            assert_eq!(certificate_rejected(&text), want, "{text}");
        }
    }

    #[test]
    fn tls_handshake_messages() {
        let cases: &[(String, &str)] = &[
            (format!("{VERIFY} (certificate has expired)"), "certificate has expired"),
            (format!("{VERIFY} (self-signed certificate)"), "self-signed certificate (untrusted)"),
            (format!("{VERIFY} (self signed certificate)"), "self-signed certificate (untrusted)"),
            (
                format!("{VERIFY} (self-signed certificate in certificate chain)"),
                "self-signed certificate in chain (untrusted)",
            ),
            (
                format!("{VERIFY} (unable to get local issuer certificate)"),
                "certificate is not trusted (unknown issuer)",
            ),
            (format!("{VERIFY} (Hostname mismatch)"), "certificate does not match host h.test"),
            (format!("{VERIFY} (IP address mismatch)"), "certificate does not match host h.test"),
            (
                format!("{VERIFY} (certificate is not yet valid)"),
                "certificate is not yet valid",
            ),
            (VERIFY.to_owned(), "certificate is not trusted (unknown issuer)"),
            (
                "error:0A00010B:SSL routines:ssl3_get_record:wrong version number:../ssl/record/ssl3_record.c:354:".to_owned(),
                "server does not speak TLS (wrong version number)",
            ),
            (
                "error:0A000410:SSL routines:ssl3_read_bytes:sslv3 alert handshake failure:x.c:1:SSL alert number 40".to_owned(),
                "server aborted the handshake (no shared protocol or cipher, or client certificate required)",
            ),
            (
                "unexpected EOF".to_owned(),
                "connection closed during TLS handshake",
            ),
            (
                "error:0A000126:SSL routines:ssl3_read_n:unexpected eof while reading:x.c:1:".to_owned(),
                "connection closed during TLS handshake",
            ),
            (
                "error:0A0000BF:SSL routines:tls_setup_handshake:no protocols available:x.c:1:".to_owned(),
                "TLS handshake failed: no protocols available",
            ),
            ("something odd".to_owned(), "TLS handshake failed: something odd"),
        ];
        for (text, want) in cases {
            let f = tls_handshake("h.test", text);
            assert_eq!(f.kind, FailureKind::Tls, "{text}");
            assert_eq!(f.phase, None);
            assert_eq!(f.message, *want, "{text}");
        }
    }

    #[test]
    fn connect_messages() {
        let addr: SocketAddr = "127.0.0.1:1234".parse().unwrap();
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        let cases: Vec<(SocketAddr, io::Error, usize, &str)> = vec![
            (
                addr,
                io::ErrorKind::ConnectionRefused.into(),
                0,
                "connection refused to 127.0.0.1:1234",
            ),
            (
                v6,
                io::ErrorKind::ConnectionRefused.into(),
                1,
                "connection refused to [::1]:80 (and 1 other address failed)",
            ),
            (
                addr,
                io::ErrorKind::ConnectionReset.into(),
                2,
                "connection reset by 127.0.0.1:1234 (and 2 other addresses failed)",
            ),
            (
                addr,
                io::ErrorKind::TimedOut.into(),
                0,
                "connection to 127.0.0.1:1234 timed out",
            ),
            (
                addr,
                io::Error::from_raw_os_error(113),
                0,
                "cannot connect to 127.0.0.1:1234: no route to host",
            ),
            (
                addr,
                io::Error::from_raw_os_error(101),
                0,
                "cannot connect to 127.0.0.1:1234: network is unreachable",
            ),
            (
                addr,
                io::Error::from_raw_os_error(libc::ECONNABORTED),
                0,
                "connection aborted to 127.0.0.1:1234",
            ),
            (
                addr,
                io::Error::from_raw_os_error(libc::EADDRNOTAVAIL),
                0,
                "cannot connect to 127.0.0.1:1234: address not available",
            ),
        ];
        for (addr, err, others, want) in cases {
            let f = connect(addr, &err, others);
            assert_eq!(f.kind, FailureKind::Connect);
            assert_eq!(f.message, want);
        }
    }

    #[test]
    fn dns_messages() {
        let cases = [
            (
                io::Error::other("failed to lookup address information: Name or service not known"),
                "cannot resolve x.invalid: name or service not known",
            ),
            (
                io::Error::other(
                    "failed to lookup address information: Temporary failure in name resolution",
                ),
                "cannot resolve x.invalid: temporary failure in name resolution",
            ),
        ];
        for (err, want) in cases {
            let f = dns("x.invalid", &err);
            assert_eq!(f.kind, FailureKind::Dns);
            assert_eq!(f.message, want);
        }
        assert_eq!(no_addresses("x.test").kind, FailureKind::Dns);
    }

    #[test]
    fn http_messages() {
        let facts = |parse, incomplete, io_kind, text: &str| ErrorFacts {
            parse,
            incomplete,
            io_kind,
            text: text.to_owned(),
        };
        use io::ErrorKind as K;
        let cases: Vec<(Stage, ErrorFacts, FailureKind, &str)> = vec![
            (
                Stage::Head,
                facts(true, false, None, "invalid HTTP version parsed"),
                FailureKind::Http,
                "malformed response: invalid HTTP version parsed",
            ),
            (
                Stage::Head,
                facts(false, true, None, "connection closed before message completed"),
                FailureKind::Http,
                "connection closed before the response head",
            ),
            (
                Stage::Head,
                facts(false, false, Some(K::ConnectionReset), "connection error: Connection reset by peer (os error 104)"),
                FailureKind::Http,
                "connection reset before the response head",
            ),
            (
                Stage::Body,
                facts(false, false, Some(K::UnexpectedEof), "error reading a body from connection: end of file before message length reached"),
                FailureKind::Http,
                "connection closed mid-body",
            ),
            (
                Stage::Body,
                facts(false, false, Some(K::ConnectionReset), "error reading a body from connection: Connection reset by peer (os error 104)"),
                FailureKind::Http,
                "connection reset mid-body",
            ),
            (
                Stage::Body,
                facts(true, false, None, "invalid chunk size"),
                FailureKind::Http,
                "malformed response: invalid chunk size",
            ),
            (
                Stage::Head,
                facts(false, false, Some(K::Other), "connection error: error:0A00045C:SSL routines:ssl3_read_bytes:tlsv13 alert certificate required:x.c:1:SSL alert number 116"),
                FailureKind::Tls,
                "server requires a client certificate",
            ),
            (
                Stage::Head,
                facts(false, false, Some(K::Other), "connection error: error:0A000418:SSL routines:ssl3_read_bytes:tlsv1 alert unknown ca:x.c:1:SSL alert number 48"),
                FailureKind::Tls,
                "server rejected the client certificate",
            ),
            (
                Stage::Head,
                facts(false, false, Some(K::Other), "weird"),
                FailureKind::Http,
                "request failed: weird",
            ),
            // Each sign of a cut connection on its own.
            (
                Stage::Head,
                facts(false, true, None, "incomplete message"),
                FailureKind::Http,
                "connection closed before the response head",
            ),
            (
                Stage::Body,
                facts(false, false, Some(K::UnexpectedEof), "body error"),
                FailureKind::Http,
                "connection closed mid-body",
            ),
            (
                Stage::Body,
                facts(false, false, None, "stream ended: Unexpected EOF"),
                FailureKind::Http,
                "connection closed mid-body",
            ),
            (
                Stage::Head,
                facts(false, false, Some(K::ConnectionAborted), "aborted"),
                FailureKind::Http,
                "connection reset before the response head",
            ),
            (
                Stage::Body,
                facts(false, false, None, "body error"),
                FailureKind::Http,
                "error reading the body: body error",
            ),
        ];
        for (stage, facts, kind, want) in cases {
            let f = http(stage, &facts);
            assert_eq!((f.kind, f.message.as_str()), (kind, want), "{facts:?}");
        }
    }

    /// The hyper error of a request over an in-memory pipe whose server answers `reply` and
    /// hangs up.
    async fn hyper_error(reply: &'static [u8]) -> hyper::Error {
        use http_body_util::Empty;
        use hyper_util::rt::TokioIo;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut server) = tokio::io::duplex(4096);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(client))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = http::Request::get("http://h.test/")
            .body(Empty::new())
            .unwrap();
        let response = tokio::spawn(async move { sender.send_request(request).await });
        let _ = server.read(&mut [0; 4096]).await.unwrap();
        server.write_all(reply).await.unwrap();
        drop(server);
        response.await.unwrap().unwrap_err()
    }

    /// An error with a message and an optional source, to build chains.
    #[derive(Debug)]
    struct Link(
        &'static str,
        Option<Box<dyn std::error::Error + Send + Sync>>,
    );

    impl std::fmt::Display for Link {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Link {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn facts_join_the_chain_once_each_and_take_the_first_io_kind() {
        let reset = io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer");
        let aborted = io::Error::new(io::ErrorKind::ConnectionAborted, "aborted");
        let chain = Link(
            "connection error",
            Some(Box::new(Link(
                "reset by peer",
                Some(Box::new(Link("reset by peer", Some(Box::new(reset))))),
            ))),
        );
        let facts = ErrorFacts::from_chain(&chain, false, false);
        assert_eq!(facts.text, "connection error: reset by peer");
        assert_eq!(facts.io_kind, Some(io::ErrorKind::ConnectionReset));
        // An io::Error's source is its inner error's source: here another io::Error.
        let inner = Link("first", Some(Box::new(aborted)));
        let chain = Link(
            "request",
            Some(Box::new(io::Error::new(io::ErrorKind::TimedOut, inner))),
        );
        let facts = ErrorFacts::from_chain(&chain, true, true);
        assert_eq!(facts.text, "request: first: aborted");
        assert_eq!(facts.io_kind, Some(io::ErrorKind::TimedOut));
        assert!(facts.parse && facts.incomplete);
    }

    #[tokio::test]
    async fn facts_come_from_the_whole_hyper_error_chain() {
        let err = hyper_error(b"HTTP/1.1 200 OK\r\nContent-Le").await;
        let facts = ErrorFacts::from_hyper(&err);
        assert!(facts.incomplete && !facts.parse, "{facts:?}");
        assert!(facts.text.starts_with(&err.to_string()), "{facts:?}");
        assert_eq!(
            http(Stage::Head, &facts).message,
            "connection closed before the response head"
        );
        let err = hyper_error(b"HTTP/9.9 200 OK\r\n\r\n").await;
        let facts = ErrorFacts::from_hyper(&err);
        assert!(facts.parse && !facts.incomplete, "{facts:?}");
        assert!(
            http(Stage::Head, &facts)
                .message
                .starts_with("malformed response: "),
            "{facts:?}"
        );
    }

    #[test]
    fn timeout_names_phase() {
        let f = timeout(Phase::Ttfb, Duration::from_millis(1500));
        assert_eq!(f.kind, FailureKind::Timeout);
        assert_eq!(f.phase, Some(Phase::Ttfb));
        assert_eq!(
            f.message,
            "timed out after 1.5s waiting for the response head"
        );
    }

    #[test]
    fn redirect_messages() {
        let a = Url::parse("http://a.test/").unwrap();
        let b = Url::parse("http://b.test/x").unwrap();
        let f = redirect_loop(&[a.clone(), b.clone()], &a);
        assert_eq!(f.kind, FailureKind::RedirectLoop);
        assert_eq!(
            f.message,
            "redirect loop: http://a.test/ -> http://b.test/x -> http://a.test/"
        );
        let f = too_many_redirects(1, &[a.clone(), b.clone()], &a);
        assert_eq!(
            f.message,
            "too many redirects (limit 1): http://a.test/ -> http://b.test/x -> http://a.test/"
        );
    }

    #[test]
    fn a_long_redirect_chain_names_its_ends() {
        let urls: Vec<Url> = (0..9)
            .map(|i| Url::parse(&format!("http://h{i}.test/")).unwrap())
            .collect();
        let names = |range: std::ops::Range<usize>| {
            range
                .map(|i| format!("http://h{i}.test/"))
                .collect::<Vec<_>>()
                .join(" -> ")
        };
        // Six URLs are all named; seven or more keep three at each end.
        assert_eq!(chain_text(&urls[..5], &urls[5]), names(0..6));
        assert_eq!(
            chain_text(&urls[..6], &urls[6]),
            format!("{} -> (1 more) -> {}", names(0..3), names(4..7))
        );
        assert_eq!(
            chain_text(&urls[..8], &urls[8]),
            format!("{} -> (3 more) -> {}", names(0..3), names(6..9))
        );
        // Each quoted URL is cut to MAX_QUOTED_URL bytes.
        let long = Url::parse(&format!("http://a.test/{}", "x".repeat(1000))).unwrap();
        let text = chain_text(std::slice::from_ref(&long), &long);
        assert!(text.len() < 2 * MAX_QUOTED_URL + 16, "{}", text.len());
    }

    #[test]
    fn closed_connections_are_recognised_by_any_of_their_texts() {
        for text in [
            "unexpected eof while reading",
            "end of file",
            "connection closed by peer",
        ] {
            assert!(is_closed_text(text), "{text}");
        }
        assert!(!is_closed_text("connection reset"));
    }

    #[test]
    fn os_messages_are_humanised() {
        assert_eq!(
            human_os_message("Connection refused (os error 111)"),
            "connection refused"
        );
        assert_eq!(
            human_os_message("Name or service not known"),
            "name or service not known"
        );
        assert_eq!(human_os_message(""), "");
        // Only a trailing "(os error N)" is cut.
        assert_eq!(
            human_os_message("Odd (os error 5) after"),
            "odd (os error 5) after"
        );
        assert_eq!(openssl_reason(VERIFY), "certificate verify failed");
    }
}
