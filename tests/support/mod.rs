//! Loopback test servers and fixtures shared by the integration tests.
//!
//! - [`site`]: a `Site` with test defaults, built directly (no config loader involved).
//! - [`serve`]: a plain HTTP/1.1 server on a loopback port whose handler writes raw bytes, so a
//!   test can make it answer, stall, trickle, cut a body short or stream gigabytes; it records
//!   every request and how many bytes it managed to write.
//! - [`TlsServer`]: an OpenSSL server (blocking threads) that answers `200 hello over tls`,
//!   optionally demanding a client certificate.
//! - [`TestCa`], [`Leaf`]: certificates generated with rcgen at test time (none are committed).
//! - [`black_hole`]: accepts connections and never reads or writes.
//! - [`gzip_bomb`]: a gzip stream of zeros that decompresses ~1000:1, generated in pieces.
#![allow(dead_code)] // each test file uses a subset

use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use sitewatch::config::Site;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use url::Url;

/// A site probing `url` with a 5 s timeout and the crate's default cap and redirect limit.
pub fn site(url: &str) -> Site {
    Site {
        timeout: Duration::from_secs(5),
        ..Site::with_defaults("test", Url::parse(url).expect("test URL parses"))
    }
}

/// A port on 127.0.0.1 nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Whether this machine has the IPv6 loopback address.
pub fn ipv6_loopback_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP server

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub target: String,
    /// Names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Log {
    requests: Mutex<Vec<Received>>,
    connections: AtomicUsize,
    bytes_written: AtomicU64,
    /// Writes that failed because the client went away.
    broken_writes: AtomicUsize,
}

/// A running test server; it lives until the test's runtime shuts down.
#[derive(Clone)]
pub struct Server {
    pub addr: SocketAddr,
    log: Arc<Log>,
}

impl Server {
    /// `http://<addr><path>` (IPv6 addresses bracketed).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.log.requests.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.log.connections.load(Ordering::SeqCst)
    }

    /// Bytes the handlers wrote successfully, over all connections.
    pub fn bytes_written(&self) -> u64 {
        self.log.bytes_written.load(Ordering::SeqCst)
    }

    pub fn broken_writes(&self) -> usize {
        self.log.broken_writes.load(Ordering::SeqCst)
    }

    /// Waits (up to `limit`) until a write failed because the client dropped the connection.
    pub async fn wait_for_broken_write(&self, limit: Duration) -> bool {
        let start = tokio::time::Instant::now();
        while start.elapsed() < limit {
            if self.broken_writes() > 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

/// The server side of one connection, handed to the handler after the request was read.
pub struct Conn {
    stream: TcpStream,
    log: Arc<Log>,
}

impl Conn {
    /// Writes all of `data`, counting the bytes; an error means the client went away.
    pub async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self.stream.write_all(data).await {
            Ok(()) => {
                self.log
                    .bytes_written
                    .fetch_add(data.len() as u64, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => {
                self.log.broken_writes.fetch_add(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// A complete response with `Content-Length` and `Connection: close`.
    pub async fn respond(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ));
        let _ = self.write(head.as_bytes()).await;
        let _ = self.write(body).await;
    }

    /// Writes a response head only (status line, headers, blank line).
    pub async fn head(&mut self, status: u16, headers: &[(&str, &str)]) -> std::io::Result<()> {
        let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        self.write(head.as_bytes()).await
    }

    /// Waits until the client closes the connection (or `limit` passes), reading and
    /// discarding whatever it sends.
    pub async fn wait_closed(&mut self, limit: Duration) {
        let mut buf = [0u8; 1024];
        let _ = tokio::time::timeout(limit, async {
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        404 => "Not Found",
        _ => "Whatever",
    }
}

/// Starts a server on `bind` (e.g. `127.0.0.1:0`, `[::1]:0`). Each connection's request is
/// read and recorded, then `handler` writes whatever it likes; the connection closes when the
/// handler returns.
pub async fn serve<F, Fut>(bind: &str, handler: F) -> Server
where
    F: Fn(Received, Conn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(bind).await.expect("bind test server");
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Log::default());
    let handler = Arc::new(handler);
    let server = Server {
        addr,
        log: log.clone(),
    };
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            log.connections.fetch_add(1, Ordering::SeqCst);
            let log = log.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let Some(request) = read_request(&mut stream).await else {
                    return;
                };
                log.requests.lock().unwrap().push(request.clone());
                handler(request, Conn { stream, log }).await;
            });
        }
    });
    server
}

/// Reads one request head and a `Content-Length` body.
async fn read_request(stream: &mut TcpStream) -> Option<Received> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Received {
        method,
        target,
        headers,
        body,
    })
}

/// A listener that accepts connections and never reads or writes (until the runtime ends).
pub async fn black_hole() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// A certificate and its PKCS#8 key, PEM-encoded.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A test certificate authority.
pub struct TestCa {
    pub cert_pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// Validity of a generated certificate.
#[derive(Clone, Copy)]
pub enum Validity {
    /// Valid from 2020 until the given year (Jan 1st).
    Until(i32),
    /// Valid only during the year 2000.
    Expired,
}

fn leaf_params(common_name: &str, sans: &[&str], validity: Validity) -> CertificateParams {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).expect("valid SANs");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    match validity {
        Validity::Until(year) => {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(year, 1, 1);
        }
        Validity::Expired => {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
    }
    params
}

impl TestCa {
    pub fn new(common_name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert_pem: cert.pem(),
            cert,
            key,
        }
    }

    /// A certificate for `sans` (DNS names or IP addresses) signed by this CA.
    pub fn leaf(&self, common_name: &str, sans: &[&str], validity: Validity) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = leaf_params(common_name, sans, validity)
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A self-signed certificate for `sans`.
pub fn self_signed(common_name: &str, sans: &[&str]) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let cert = leaf_params(common_name, sans, Validity::Until(2099))
        .self_signed(&key)
        .unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

// ---------------------------------------------------------------------------------------------
// TLS server

/// A TLS acceptor (Mozilla's intermediate settings) serving `leaf`.
pub fn acceptor(leaf: &Leaf) -> openssl::ssl::SslAcceptorBuilder {
    use openssl::pkey::PKey;
    use openssl::ssl::{SslAcceptor, SslMethod};
    use openssl::x509::X509;

    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    builder
        .set_private_key(&PKey::private_key_from_pem(leaf.key_pem.as_bytes()).unwrap())
        .unwrap();
    builder
        .set_certificate(&X509::from_pem(leaf.cert_pem.as_bytes()).unwrap())
        .unwrap();
    builder
}

/// An HTTPS server on 127.0.0.1 answering every request with `200 hello over tls`.
pub struct TlsServer {
    pub addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    failed_handshakes: Arc<AtomicUsize>,
}

impl TlsServer {
    /// Serves with `leaf`; with `client_ca`, demands a client certificate signed by it.
    pub fn start(leaf: &Leaf, client_ca: Option<&TestCa>) -> TlsServer {
        use openssl::ssl::SslVerifyMode;
        use openssl::x509::X509;

        let mut builder = acceptor(leaf);
        if let Some(ca) = client_ca {
            builder
                .cert_store_mut()
                .add_cert(X509::from_pem(ca.cert_pem.as_bytes()).unwrap())
                .unwrap();
            builder.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        }
        let acceptor = Arc::new(builder.build());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let failed_handshakes = Arc::new(AtomicUsize::new(0));
        let (ok, failed) = (handshakes.clone(), failed_handshakes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let acceptor = acceptor.clone();
                let (ok, failed) = (ok.clone(), failed.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let raw = stream.try_clone().unwrap();
                    match acceptor.accept(stream) {
                        Ok(mut tls) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                            let mut buf = [0u8; 4096];
                            let mut seen = Vec::new();
                            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                                match tls.read(&mut buf) {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                                }
                            }
                            let body = b"hello over tls";
                            let _ = write!(
                                tls,
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            );
                            let _ = tls.write_all(body);
                            let _ = tls.shutdown();
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            // Let the alert reach the client before the socket closes: close
                            // our side, then read until the client hangs up.
                            let mut raw = raw;
                            let _ = raw.shutdown(std::net::Shutdown::Write);
                            let mut buf = [0u8; 4096];
                            while matches!(raw.read(&mut buf), Ok(n) if n > 0) {}
                        }
                    }
                });
            }
        });
        TlsServer {
            addr,
            handshakes,
            failed_handshakes,
        }
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }

    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }

    pub fn failed_handshakes(&self) -> usize {
        self.failed_handshakes.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------
// Gzip bomb

/// A gzip stream of zeros in pieces: send `head`, then `unit` as often as you like; every
/// `unit` decompresses to `unit_zeros` zero bytes (~1000:1). No trailer: it never ends.
pub struct GzipBomb {
    pub head: Vec<u8>,
    pub unit: Vec<u8>,
    pub unit_zeros: usize,
}

/// Builds the bomb: raw deflate blocks, each segment ended by a sync flush so it is
/// byte-aligned and self-contained given a window of zeros, which makes the steady-state
/// segment repeatable.
pub fn gzip_bomb() -> GzipBomb {
    use flate2::{Compress, Compression, FlushCompress};
    const UNIT: usize = 1 << 20;
    let zeros = vec![0u8; UNIT];
    let mut deflate = Compress::new(Compression::best(), false);
    let segment = |deflate: &mut Compress| {
        let mut out = Vec::with_capacity(64 * 1024);
        let before = deflate.total_in();
        deflate
            .compress_vec(&zeros, &mut out, FlushCompress::Sync)
            .unwrap();
        assert_eq!(
            deflate.total_in() - before,
            UNIT as u64,
            "segment fully consumed"
        );
        out
    };
    let first = segment(&mut deflate);
    let unit = segment(&mut deflate);
    // gzip header: magic, deflate, no flags, no mtime, no extra flags, unknown OS.
    let mut head = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    head.extend_from_slice(&first);
    GzipBomb {
        head,
        unit,
        unit_zeros: UNIT,
    }
}
