//! The probe against real loopback servers that answer, redirect, stall, trickle, cut bodies
//! short, stream huge or compressed-bomb bodies, and speak TLS with good and bad certificates.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, Method};
use sitewatch::config::{Site, TlsOptions};
use sitewatch::probe::{Attempt, Prober, Response, DEFAULT_USER_AGENT};
use sitewatch::result::{Failure, FailureKind, Phase};
use support::{serve, site, Conn, Received, TestCa, TlsServer, Validity};

fn prober() -> Prober {
    Prober::new(DEFAULT_USER_AGENT).unwrap()
}

fn ok(attempt: &Attempt) -> &Response {
    match &attempt.outcome {
        Ok(r) => r,
        Err(f) => panic!(
            "expected a response, got {f:?} (timings {:?})",
            attempt.timings
        ),
    }
}

fn failed(attempt: &Attempt) -> &Failure {
    match &attempt.outcome {
        Err(f) => f,
        Ok(r) => panic!(
            "expected a failure, got status {} from {}",
            r.status, r.final_url
        ),
    }
}

fn with_timeout(mut s: Site, timeout: Duration) -> Site {
    s.timeout = timeout;
    s
}

/// A server answering `200` with a fixed body.
async fn hello_server(bind: &str) -> support::Server {
    serve(bind, |_req: Received, mut conn: Conn| async move {
        conn.respond(200, &[("Content-Type", "text/plain")], b"hello")
            .await;
    })
    .await
}

/// The scheduler spawns probes on a multi-threaded runtime: the future must be `Send`.
#[allow(dead_code)]
fn probe_future_is_send(prober: &Prober, site: &Site) {
    fn is_send<T: Send>(_: &T) {}
    is_send(&prober.probe(site));
}

// ---- plain HTTP ------------------------------------------------------------------------------

#[tokio::test]
async fn get_200_with_body() {
    let server = hello_server("127.0.0.1:0").await;
    let attempt = prober().probe(&site(&server.url("/x?y=1"))).await;
    let r = ok(&attempt);
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"hello");
    assert!(!r.body_truncated);
    assert_eq!(r.final_url.as_str(), server.url("/x?y=1"));
    assert!(r
        .headers
        .contains(&("content-type".to_owned(), "text/plain".to_owned())));
    assert!(r.cert.is_none() && attempt.cert.is_none());
    let t = &attempt.timings;
    assert_eq!(t.dns_ms, Some(0.0), "IP literal skips DNS");
    assert!(t.connect_ms.is_some() && t.ttfb_ms.is_some() && t.transfer_ms.is_some());
    assert_eq!(t.tls_ms, None);

    let seen = &server.requests()[0];
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.target, "/x?y=1");
    assert_eq!(seen.header("user-agent"), Some(DEFAULT_USER_AGENT));
    assert_eq!(seen.header("host"), Some(server.addr.to_string().as_str()));
    assert_eq!(seen.header("accept-encoding"), Some("gzip, deflate"));
    assert_eq!(seen.header("connection"), Some("close"));
    assert_eq!(seen.header("content-length"), None, "GET without body");
}

#[tokio::test]
async fn custom_method_headers_and_body_are_sent() {
    let server = serve("127.0.0.1:0", |req: Received, mut conn: Conn| async move {
        let method = req.method.clone();
        conn.respond(201, &[("X-Seen-Method", method.as_str())], &req.body)
            .await;
    })
    .await;
    let mut s = site(&server.url("/echo"));
    Arc::make_mut(&mut s.request).method = Method::PUT;
    Arc::make_mut(&mut s.request).body = Some(bytes::Bytes::from_static(b"{\"ping\":1}"));
    Arc::make_mut(&mut s.request).headers = vec![
        (
            HeaderName::from_static("x-probe"),
            HeaderValue::from_static("yes"),
        ),
        (
            HeaderName::from_static("content-type"),
            HeaderValue::from_static("application/json"),
        ),
        (
            HeaderName::from_static("user-agent"),
            HeaderValue::from_static("custom-agent/2"),
        ),
        (
            HeaderName::from_static("accept-encoding"),
            HeaderValue::from_static("identity"),
        ),
    ];
    let attempt = prober().probe(&s).await;
    let r = ok(&attempt);
    assert_eq!(r.status, 201);
    assert_eq!(&r.body[..], b"{\"ping\":1}");
    assert!(r
        .headers
        .contains(&("x-seen-method".to_owned(), "PUT".to_owned())));

    let seen = &server.requests()[0];
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.body, b"{\"ping\":1}");
    assert_eq!(seen.header("x-probe"), Some("yes"));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("content-length"), Some("10"));
    assert_eq!(seen.header("user-agent"), Some("custom-agent/2"));
    assert_eq!(seen.header("accept-encoding"), Some("identity"));
    assert_eq!(
        seen.headers
            .iter()
            .filter(|(n, _)| n == "user-agent")
            .count(),
        1,
        "the site's User-Agent replaces the default"
    );
}

#[tokio::test]
async fn compressed_bodies_are_decoded() {
    use std::io::Write;
    let text = b"compressed hello, compressed hello, compressed hello";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text).unwrap();
    let gz = gz.finish().unwrap();
    let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zl.write_all(text).unwrap();
    let zl = zl.finish().unwrap();
    let server = serve("127.0.0.1:0", move |req: Received, mut conn: Conn| {
        let (gz, zl) = (gz.clone(), zl.clone());
        async move {
            match req.target.as_str() {
                "/gzip" => {
                    conn.respond(200, &[("Content-Encoding", "gzip")], &gz)
                        .await
                }
                "/deflate" => {
                    conn.respond(200, &[("Content-Encoding", "deflate")], &zl)
                        .await
                }
                _ => {
                    conn.respond(200, &[("Content-Encoding", "br")], b"\x01\x02")
                        .await
                }
            }
        }
    })
    .await;
    let p = prober();
    for path in ["/gzip", "/deflate"] {
        let attempt = p.probe(&site(&server.url(path))).await;
        assert_eq!(&ok(&attempt).body[..], text, "{path}");
    }
    let attempt = p.probe(&site(&server.url("/br"))).await;
    assert_eq!(
        &ok(&attempt).body[..],
        b"\x01\x02",
        "unknown encodings are kept as sent"
    );
}

#[tokio::test]
async fn ipv6_loopback() {
    assert!(
        support::ipv6_loopback_available(),
        "::1 is not configured on this machine (check `ip -6 addr`); this test needs it"
    );
    let server = hello_server("[::1]:0").await;
    let url = server.url("/");
    assert!(url.starts_with("http://[::1]:"), "{url}");
    let attempt = prober().probe(&site(&url)).await;
    assert_eq!(&ok(&attempt).body[..], b"hello");
    assert_eq!(attempt.timings.dns_ms, Some(0.0));
    let host = server.requests()[0].header("host").unwrap().to_owned();
    assert_eq!(host, server.addr.to_string(), "Host keeps the brackets");
}

#[tokio::test]
async fn host_names_are_resolved() {
    let server = hello_server("127.0.0.1:0").await;
    let attempt = prober()
        .probe(&site(&format!("http://localhost:{}/", server.addr.port())))
        .await;
    assert_eq!(ok(&attempt).status, 200);
    assert!(attempt.timings.dns_ms.is_some());
    assert_eq!(
        server.requests()[0].header("host"),
        Some(format!("localhost:{}", server.addr.port()).as_str())
    );
}

// ---- redirects -------------------------------------------------------------------------------

/// Redirects by path: `/a` 301 → absolute `/b`, `/b` 302 → relative `c`, `/c` 200; each
/// answer is delayed 50 ms so summed TTFB is visible. `/loop1` ↔ `/loop2`; `/n/<i>` →
/// `/n/<i+1>` forever; `/post303` 303 and `/post307` 307 → `/echo`.
async fn redirect_server() -> support::Server {
    let base = Arc::new(std::sync::OnceLock::<String>::new());
    let base2 = base.clone();
    let server = serve("127.0.0.1:0", move |req: Received, mut conn: Conn| {
        let base = base2.get().cloned().unwrap_or_default();
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let target = req.target.as_str();
            match target {
                "/a" => {
                    conn.respond(301, &[("Location", format!("{base}/b").as_str())], b"")
                        .await
                }
                "/b" => conn.respond(302, &[("Location", "c")], b"moved").await,
                "/c" => conn.respond(200, &[], b"done").await,
                "/loop1" => conn.respond(302, &[("Location", "/loop2")], b"").await,
                "/loop2" => conn.respond(302, &[("Location", "/loop1")], b"").await,
                "/post303" => conn.respond(303, &[("Location", "/echo")], b"").await,
                "/post307" => conn.respond(307, &[("Location", "/echo")], b"").await,
                "/echo" => {
                    let method = req.method.clone();
                    conn.respond(200, &[("X-Method", method.as_str())], &req.body)
                        .await
                }
                _ if target.starts_with("/n/") => {
                    let i: u32 = target[3..].parse().unwrap();
                    let next = format!("/n/{}", i + 1);
                    conn.respond(307, &[("Location", next.as_str())], b"").await
                }
                _ => conn.respond(404, &[], b"").await,
            }
        }
    })
    .await;
    base.set(format!("http://{}", server.addr)).unwrap();
    server
}

#[tokio::test]
async fn redirect_chain_is_followed_and_timed() {
    let server = redirect_server().await;
    let attempt = prober().probe(&site(&server.url("/a"))).await;
    let r = ok(&attempt);
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"done");
    assert_eq!(
        r.final_url.as_str(),
        server.url("/c"),
        "relative Location resolved"
    );
    let paths: Vec<String> = server.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(paths, ["/a", "/b", "/c"]);
    assert_eq!(server.connections(), 3, "a fresh connection per hop");
    let t = &attempt.timings;
    assert!(
        t.ttfb_ms.unwrap() >= 150.0,
        "TTFB summed over 3 hops: {t:?}"
    );
    assert!(t.total_ms >= t.ttfb_ms.unwrap());
    assert!(t.connect_ms.is_some());
}

#[tokio::test]
async fn redirect_loop_fails() {
    let server = redirect_server().await;
    let attempt = prober().probe(&site(&server.url("/loop1"))).await;
    let f = failed(&attempt);
    assert_eq!(f.kind, FailureKind::RedirectLoop);
    assert!(
        f.message.contains("/loop1") && f.message.contains("/loop2"),
        "{}",
        f.message
    );
    assert_eq!(server.requests().len(), 2);
    let head = attempt.head.as_ref().expect("the last 302 arrived");
    assert_eq!(
        (head.status, head.url.as_str()),
        (302, server.url("/loop2").as_str())
    );
}

#[tokio::test]
async fn too_many_redirects_fail() {
    let server = redirect_server().await;
    let mut s = site(&server.url("/n/0"));
    s.max_redirects = 3;
    let attempt = prober().probe(&s).await;
    let f = failed(&attempt);
    assert_eq!(f.kind, FailureKind::RedirectLoop);
    assert!(f.message.contains("/n/4"), "{}", f.message);
    assert_eq!(
        server.requests().len(),
        4,
        "the original request and 3 redirects"
    );
}

/// `follow_redirects = false`, and `max_redirects = 0` alike, make the first response the
/// answer: a 301 with its `Location`, for monitors of the redirect itself.
#[tokio::test]
async fn a_redirect_can_be_the_answer() {
    let target = format!("https://127.0.0.1:{}/", support::closed_port());
    let location = target.clone();
    let server = serve("127.0.0.1:0", move |_req: Received, mut conn: Conn| {
        let location = location.clone();
        async move {
            conn.respond(301, &[("Location", location.as_str())], b"moved")
                .await
        }
    })
    .await;
    let p = prober();

    let mut s = site(&server.url("/"));
    s.follow_redirects = false;
    let mut zero = site(&server.url("/"));
    zero.max_redirects = 0;
    for s in [s, zero] {
        let attempt = p.probe(&s).await;
        let r = ok(&attempt);
        assert_eq!((r.status, &r.body[..]), (301, &b"moved"[..]));
        assert_eq!(r.final_url.as_str(), server.url("/"));
        assert!(r.headers.contains(&("location".to_owned(), target.clone())));
    }
    assert_eq!(server.requests().len(), 2);

    // Followed by default: to the closed port.
    let attempt = p.probe(&site(&server.url("/"))).await;
    assert_eq!(failed(&attempt).kind, FailureKind::Connect);
}

#[tokio::test]
async fn redirect_methods() {
    let server = redirect_server().await;
    let p = prober();
    let post = |path: &str| {
        let mut s = site(&server.url(path));
        Arc::make_mut(&mut s.request).method = Method::POST;
        Arc::make_mut(&mut s.request).body = Some(bytes::Bytes::from_static(b"form=1"));
        Arc::make_mut(&mut s.request).headers = vec![(
            HeaderName::from_static("content-type"),
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        )];
        s
    };

    let attempt = p.probe(&post("/post303")).await;
    assert_eq!(ok(&attempt).status, 200);
    let echo = server.requests().pop().unwrap();
    assert_eq!(
        (echo.method.as_str(), echo.body.as_slice()),
        ("GET", &b""[..])
    );
    assert_eq!(
        echo.header("content-type"),
        None,
        "body headers dropped with the body"
    );

    let attempt = p.probe(&post("/post307")).await;
    assert_eq!(&ok(&attempt).body[..], b"form=1");
    let echo = server.requests().pop().unwrap();
    assert_eq!(
        (echo.method.as_str(), echo.body.as_slice()),
        ("POST", &b"form=1"[..])
    );
}

#[tokio::test]
async fn credentials_stay_with_their_origin() {
    let other = serve("127.0.0.1:0", |_req: Received, mut conn: Conn| async move {
        conn.respond(200, &[], b"other").await;
    })
    .await;
    let target = other.url("/landing");
    let first = serve("127.0.0.1:0", move |_req: Received, mut conn: Conn| {
        let target = target.clone();
        async move {
            conn.respond(302, &[("Location", target.as_str())], b"")
                .await
        }
    })
    .await;
    let mut s = site(&first.url("/"));
    Arc::make_mut(&mut s.request).headers = vec![
        (
            HeaderName::from_static("authorization"),
            HeaderValue::from_static("Bearer secret"),
        ),
        (
            HeaderName::from_static("x-keep"),
            HeaderValue::from_static("1"),
        ),
    ];
    let attempt = prober().probe(&s).await;
    assert_eq!(&ok(&attempt).body[..], b"other");
    assert_eq!(
        first.requests()[0].header("authorization"),
        Some("Bearer secret")
    );
    let landed = &other.requests()[0];
    assert_eq!(landed.header("authorization"), None);
    assert_eq!(
        landed.header("x-keep"),
        None,
        "no site-configured header leaves the origin"
    );
    assert_eq!(landed.header("host"), Some(other.addr.to_string().as_str()));
}

/// Every site-configured header stays with the site's origin after a redirect, whatever its
/// name or case, on every kind of redirect, and for a change of port only; the defaults (Host,
/// User-Agent, Accept-Encoding) are sent for the new origin instead. Back on the site's own
/// origin, they are sent again.
#[tokio::test]
async fn no_site_header_follows_a_cross_origin_redirect() {
    let other = serve("127.0.0.1:0", |req: Received, mut conn: Conn| async move {
        let target = req.target.clone();
        if let Some(back) = target.strip_prefix("/back?to=") {
            let back = back.to_string();
            conn.respond(307, &[("Location", back.as_str())], b"").await
        } else {
            conn.respond(200, &[], b"other").await
        }
    })
    .await;
    let other_base = format!("http://{}", other.addr);
    let first = serve("127.0.0.1:0", move |req: Received, mut conn: Conn| {
        let other_base = other_base.clone();
        async move {
            let target = req.target.clone();
            let status: u16 = target
                .trim_start_matches('/')
                .split('?')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            if status == 200 {
                return conn.respond(200, &[], b"home").await;
            }
            let location = if target.contains("roundtrip") {
                format!(
                    "{other_base}/back?to=http://{}/200",
                    req.header("host").unwrap_or("")
                )
            } else {
                format!("{other_base}/landing")
            };
            conn.respond(status, &[("Location", location.as_str())], b"")
                .await
        }
    })
    .await;
    let headers = [
        ("x-api-key", "k-hunter2"),
        ("x-session", "s-hunter2"),
        ("authorization", "Bearer hunter2"),
        ("cookie", "sid=hunter2"),
        ("user-agent", "agent-hunter2"),
        ("accept-encoding", "identity"),
    ];
    for status in [301, 302, 303, 307, 308] {
        let mut s = site(&first.url(&format!("/{status}")));
        Arc::make_mut(&mut s.request).method = Method::POST;
        Arc::make_mut(&mut s.request).body = Some(bytes::Bytes::from_static(b"form=1"));
        Arc::make_mut(&mut s.request).headers = headers
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect();
        let before = other.requests().len();
        let attempt = prober().probe(&s).await;
        assert_eq!(&ok(&attempt).body[..], b"other", "{status}");
        let landed = &other.requests()[before];
        for (name, _) in headers {
            let seen = landed.header(name).unwrap_or("");
            assert!(!seen.contains("hunter2"), "{status}: {name}: {seen}");
        }
        assert_eq!(landed.header("user-agent"), Some(DEFAULT_USER_AGENT));
        assert_eq!(landed.header("accept-encoding"), Some("gzip, deflate"));
        assert_eq!(landed.header("host"), Some(other.addr.to_string().as_str()));
    }
    // Out and back: the site's origin gets its headers again.
    let mut s = site(&first.url("/307?roundtrip"));
    Arc::make_mut(&mut s.request).headers = vec![(
        HeaderName::from_static("x-api-key"),
        HeaderValue::from_static("k-hunter2"),
    )];
    let attempt = prober().probe(&s).await;
    assert_eq!(&ok(&attempt).body[..], b"home");
    let back = first.requests().pop().unwrap();
    assert_eq!(back.header("x-api-key"), Some("k-hunter2"));
    let bounced = other.requests().pop().unwrap();
    assert_eq!(bounced.header("x-api-key"), None);
}

// ---- connection failures ---------------------------------------------------------------------

#[tokio::test]
async fn unresolvable_name_is_dns_failure() {
    let attempt = prober().probe(&site("http://nonexistent.invalid/")).await;
    let f = failed(&attempt);
    assert_eq!(f.kind, FailureKind::Dns, "{f:?}");
    assert!(f.message.contains("nonexistent.invalid"), "{}", f.message);
    assert!(attempt.timings.dns_ms.is_some());
    assert_eq!(attempt.timings.connect_ms, None);
}

#[tokio::test]
async fn closed_port_is_connect_failure() {
    let port = support::closed_port();
    let attempt = prober()
        .probe(&site(&format!("http://127.0.0.1:{port}/")))
        .await;
    let f = failed(&attempt);
    assert_eq!(f.kind, FailureKind::Connect);
    assert_eq!(f.message, format!("connection refused to 127.0.0.1:{port}"));
    assert!(attempt.timings.connect_ms.is_some());
    assert_eq!(attempt.timings.ttfb_ms, None);
}

#[tokio::test]
async fn silent_server_times_out_waiting_for_head() {
    let server = serve("127.0.0.1:0", |_req: Received, mut conn: Conn| async move {
        conn.wait_closed(Duration::from_secs(30)).await;
    })
    .await;
    let started = Instant::now();
    let attempt = prober()
        .probe(&with_timeout(
            site(&server.url("/")),
            Duration::from_millis(400),
        ))
        .await;
    let f = failed(&attempt);
    assert_eq!(
        (f.kind, f.phase),
        (FailureKind::Timeout, Some(Phase::Ttfb)),
        "{f:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let t = &attempt.timings;
    assert!(
        t.ttfb_ms.unwrap() > 300.0,
        "the interrupted phase counts: {t:?}"
    );
    assert!(t.total_ms >= 400.0);
}

#[tokio::test]
async fn tls_handshake_that_never_completes_times_out_in_tls() {
    let addr = support::black_hole().await;
    let attempt = prober()
        .probe(&with_timeout(
            site(&format!("https://{addr}/")),
            Duration::from_millis(300),
        ))
        .await;
    let f = failed(&attempt);
    assert_eq!(
        (f.kind, f.phase),
        (FailureKind::Timeout, Some(Phase::Tls)),
        "{f:?}"
    );
}

/// Sends a head promising 1000 bytes, then one byte every 100 ms.
async fn trickle_server() -> support::Server {
    serve("127.0.0.1:0", |_req: Received, mut conn: Conn| async move {
        if conn.head(200, &[("Content-Length", "1000")]).await.is_err() {
            return;
        }
        for _ in 0..1000 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if conn.write(b"x").await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn trickling_body_times_out_in_transfer() {
    let server = trickle_server().await;
    let attempt = prober()
        .probe(&with_timeout(
            site(&server.url("/")),
            Duration::from_millis(700),
        ))
        .await;
    let f = failed(&attempt);
    assert_eq!(
        (f.kind, f.phase),
        (FailureKind::Timeout, Some(Phase::Transfer)),
        "{f:?}"
    );
    assert!(attempt.timings.transfer_ms.unwrap() > 400.0);
    let head = attempt.head.as_ref().expect("the 200 head arrived");
    assert_eq!(
        (head.status, head.url.as_str()),
        (200, server.url("/").as_str())
    );
}

#[tokio::test]
async fn trickling_body_with_small_cap_is_truncated() {
    let server = trickle_server().await;
    let mut s = with_timeout(site(&server.url("/")), Duration::from_secs(5));
    s.body_cap = 3;
    let started = Instant::now();
    let attempt = prober().probe(&s).await;
    let r = ok(&attempt);
    assert_eq!(&r.body[..], b"xxx");
    assert!(r.body_truncated);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn broken_responses_are_http_failures() {
    let server = serve("127.0.0.1:0", |req: Received, mut conn: Conn| async move {
        match req.target.as_str() {
            "/mid-body" => {
                let _ = conn.head(200, &[("Content-Length", "100")]).await;
                let _ = conn.write(b"only ten b").await;
            }
            "/garbage" => {
                let _ = conn.write(b"HTTP/1.1 abc nonsense\r\n\r\n").await;
            }
            // "/no-head": close without answering.
            _ => {}
        }
    })
    .await;
    let p = prober();
    let cases = [
        ("/mid-body", "connection closed mid-body"),
        ("/no-head", "connection closed before the response head"),
        ("/garbage", "malformed response"),
    ];
    for (path, message) in cases {
        let attempt = p.probe(&site(&server.url(path))).await;
        let f = failed(&attempt);
        assert_eq!(f.kind, FailureKind::Http, "{path}: {f:?}");
        assert!(f.message.starts_with(message), "{path}: {}", f.message);
    }
}

// ---- body caps: huge bodies and compression bombs --------------------------------------------

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Samples this process's RSS every 2 ms until dropped; yields the highest sample.
struct RssSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
}

impl RssSampler {
    fn start() -> RssSampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = rss_bytes();
            while !flag.load(Ordering::SeqCst) {
                peak = peak.max(rss_bytes());
                std::thread::sleep(Duration::from_millis(2));
            }
            peak.max(rss_bytes())
        });
        RssSampler {
            stop,
            handle: Some(handle),
        }
    }

    fn peak(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// Both huge-body cases in one test, one after the other, so the RSS measurement is not
/// disturbed by each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_bomb_bodies_stop_at_the_cap() {
    const CAP: u64 = 1 << 20;
    const HUGE: u64 = 50 << 20;
    const MIB: u64 = 1 << 20;
    let p = prober();

    // 50 MiB from a generator: a 64 KiB block written again and again.
    let huge = serve("127.0.0.1:0", |_req: Received, mut conn: Conn| async move {
        let length = HUGE.to_string();
        if conn
            .head(200, &[("Content-Length", length.as_str())])
            .await
            .is_err()
        {
            return;
        }
        let block = vec![b'a'; 64 * 1024];
        let mut sent = 0;
        while sent < HUGE {
            if conn.write(&block).await.is_err() {
                return;
            }
            sent += block.len() as u64;
        }
    })
    .await;

    // A gzip bomb: ~1 KiB units that each inflate to 1 MiB of zeros, up to 1 TiB.
    let bomb = Arc::new(support::gzip_bomb());
    let unit_zeros = bomb.unit_zeros;
    {
        use std::io::Read;
        let mut wire = bomb.head[10..].to_vec();
        for _ in 0..3 {
            wire.extend_from_slice(&bomb.unit);
        }
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(&wire[..])
            .read_to_end(&mut out)
            .unwrap_or_default();
        assert_eq!(
            out.len(),
            4 * unit_zeros,
            "the bomb's pieces decode as designed"
        );
        assert!(out.iter().all(|&b| b == 0));
        assert!(bomb.unit.len() * 500 < unit_zeros, "ratio > 500:1");
    }
    let bomb_units_sent = Arc::new(AtomicUsize::new(0));
    let units_sent = bomb_units_sent.clone();
    let bomb_server = serve("127.0.0.1:0", move |_req: Received, mut conn: Conn| {
        let bomb = bomb.clone();
        let units_sent = units_sent.clone();
        async move {
            // No Content-Length: the body runs until the connection closes.
            let head = conn
                .head(
                    200,
                    &[("Content-Encoding", "gzip"), ("Connection", "close")],
                )
                .await;
            if head.is_err() || conn.write(&bomb.head).await.is_err() {
                return;
            }
            for _ in 0..(1usize << 20) {
                if conn.write(&bomb.unit).await.is_err() {
                    return;
                }
                units_sent.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .await;

    let base = rss_bytes();
    let sampler = RssSampler::start();

    let mut s = site(&huge.url("/"));
    s.body_cap = CAP;
    let started = Instant::now();
    let attempt = p.probe(&s).await;
    let huge_elapsed = started.elapsed();
    let r = ok(&attempt);
    assert_eq!(r.body.len() as u64, CAP);
    assert!(r.body_truncated);
    assert!(r.body.iter().all(|&b| b == b'a'));
    drop(attempt);

    let mut s = site(&bomb_server.url("/"));
    s.body_cap = CAP;
    let started = Instant::now();
    let attempt = p.probe(&s).await;
    let bomb_elapsed = started.elapsed();
    let r = ok(&attempt);
    assert_eq!(r.body.len() as u64, CAP);
    assert!(r.body_truncated);
    assert!(r.body.iter().all(|&b| b == 0));

    let peak = sampler.peak();
    let growth = peak.saturating_sub(base);
    assert!(
        growth < 32 * MIB,
        "RSS grew by {} MiB reading capped bodies",
        growth / MIB
    );
    assert!(huge_elapsed < Duration::from_secs(5), "{huge_elapsed:?}");
    assert!(bomb_elapsed < Duration::from_secs(5), "{bomb_elapsed:?}");

    // The servers saw the connections dropped long before the end of their bodies.
    assert!(huge.wait_for_broken_write(Duration::from_secs(5)).await);
    assert!(
        huge.bytes_written() < HUGE / 2,
        "the 50 MiB body was drained: {} bytes written",
        huge.bytes_written()
    );
    assert!(
        bomb_server
            .wait_for_broken_write(Duration::from_secs(5))
            .await
    );
    let units = bomb_units_sent.load(Ordering::SeqCst);
    assert!(
        (units as u64) < 64 * 1024,
        "{units} bomb units (1 MiB each decoded) were sent"
    );
}

// ---- TLS -------------------------------------------------------------------------------------

fn trusting(ca: &TestCa) -> TlsOptions {
    TlsOptions {
        ca_pem: Some(ca.cert_pem.as_bytes().to_vec()),
        ..TlsOptions::default()
    }
}

fn https_site(server: &TlsServer, tls: TlsOptions) -> Site {
    let mut s = site(&server.url("/"));
    s.tls = tls.into();
    s
}

#[tokio::test]
async fn https_with_trusted_ca_passes_and_reports_cert() {
    let ca = TestCa::new("sitewatch test CA");
    let leaf = ca.leaf(
        "probe leaf",
        &["localhost", "127.0.0.1"],
        Validity::Until(2099),
    );
    let server = TlsServer::start(&leaf, None);
    let p = prober();

    let attempt = p.probe(&https_site(&server, trusting(&ca))).await;
    let r = ok(&attempt);
    assert_eq!((r.status, &r.body[..]), (200, &b"hello over tls"[..]));
    let cert = r.cert.as_ref().expect("certificate of the final hop");
    assert_eq!(Some(cert), attempt.cert.as_ref());
    assert_eq!(cert.not_after.to_rfc3339(), "2099-01-01T00:00:00+00:00");
    assert!(cert.subject.contains("probe leaf"), "{}", cert.subject);
    assert!(cert.issuer.contains("sitewatch test CA"), "{}", cert.issuer);

    // Every phase happened, and together they fit in the total.
    let t = &attempt.timings;
    let phases = [t.dns_ms, t.connect_ms, t.tls_ms, t.ttfb_ms, t.transfer_ms];
    assert!(phases.iter().all(Option::is_some), "{t:?}");
    let sum: f64 = phases.iter().flatten().sum();
    assert!(
        t.total_ms + 0.5 >= sum,
        "total {} < sum of phases {sum}",
        t.total_ms
    );

    // By name too (verifies the host name, not just the IP).
    let mut s = site(&format!("https://localhost:{}/", server.addr.port()));
    s.tls = trusting(&ca).into();
    assert_eq!(ok(&p.probe(&s).await).status, 200);
}

#[tokio::test]
async fn self_signed_cert_is_rejected() {
    let server = TlsServer::start(&support::self_signed("self", &["127.0.0.1"]), None);
    let attempt = prober()
        .probe(&https_site(&server, TlsOptions::default()))
        .await;
    let f = failed(&attempt);
    assert_eq!(f.kind, FailureKind::Tls);
    assert!(f.message.contains("self-signed"), "{}", f.message);
    assert!(attempt.timings.tls_ms.is_some());
    let cert = attempt
        .cert
        .as_ref()
        .expect("the rejected leaf is still read");
    assert!(cert.subject.contains("self"), "{}", cert.subject);
    assert!(attempt.head.is_none(), "no response arrived");
}

#[tokio::test]
async fn cert_from_unknown_ca_is_untrusted() {
    let ca = TestCa::new("unknown CA");
    let server = TlsServer::start(&ca.leaf("l", &["127.0.0.1"], Validity::Until(2099)), None);
    let f = failed(
        &prober()
            .probe(&https_site(&server, TlsOptions::default()))
            .await,
    )
    .clone();
    assert_eq!(f.kind, FailureKind::Tls);
    assert!(f.message.contains("not trusted"), "{}", f.message);
}

/// Verification failed, but the result still says what the server presented: an expired
/// certificate is exactly when its date matters.
#[tokio::test]
async fn rejected_certificate_facts_are_kept() {
    let ca = TestCa::new("old CA");
    let server = TlsServer::start(&ca.leaf("old", &["127.0.0.1"], Validity::Expired), None);
    let p = prober();
    for tls in [trusting(&ca), TlsOptions::default()] {
        let attempt = p.probe(&https_site(&server, tls)).await;
        assert_eq!(failed(&attempt).kind, FailureKind::Tls);
        let cert = attempt.cert.as_ref().expect("facts of the rejected leaf");
        assert_eq!(cert.not_after.to_rfc3339(), "2001-01-01T00:00:00+00:00");
        assert!(cert.subject.contains("old"), "{}", cert.subject);
        assert!(cert.issuer.contains("old CA"), "{}", cert.issuer);
    }
    // Not for a server that speaks no TLS at all: nothing was presented, nothing is retried.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let attempt = p.probe(&site(&format!("https://{addr}/"))).await;
    assert_eq!(failed(&attempt).kind, FailureKind::Tls, "{attempt:?}");
    assert!(attempt.cert.is_none());
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn expired_cert_is_rejected() {
    let ca = TestCa::new("CA");
    let server = TlsServer::start(&ca.leaf("old", &["127.0.0.1"], Validity::Expired), None);
    let attempt = prober().probe(&https_site(&server, trusting(&ca))).await;
    let f = failed(&attempt);
    assert_eq!(f.kind, FailureKind::Tls);
    assert_eq!(f.message, "certificate has expired");
}

#[tokio::test]
async fn cert_for_another_host_is_rejected() {
    let ca = TestCa::new("CA");
    let server = TlsServer::start(
        &ca.leaf("x", &["example.test"], Validity::Until(2099)),
        None,
    );
    let attempt = prober().probe(&https_site(&server, trusting(&ca))).await;
    let f = failed(&attempt);
    assert_eq!(f.kind, FailureKind::Tls);
    assert_eq!(f.message, "certificate does not match host 127.0.0.1");
}

#[tokio::test]
async fn insecure_accepts_any_cert() {
    let server = TlsServer::start(&support::self_signed("self", &["example.test"]), None);
    let tls = TlsOptions {
        insecure: true,
        ..TlsOptions::default()
    };
    let attempt = prober().probe(&https_site(&server, tls)).await;
    let r = ok(&attempt);
    assert_eq!(r.status, 200);
    assert!(r.cert.as_ref().unwrap().subject.contains("self"));
}

#[tokio::test]
async fn mutual_tls() {
    let ca = TestCa::new("mTLS CA");
    let server_leaf = ca.leaf("server", &["127.0.0.1"], Validity::Until(2099));
    let client = ca.leaf("client", &[], Validity::Until(2099));
    let server = TlsServer::start(&server_leaf, Some(&ca));
    let p = prober();

    let attempt = p.probe(&https_site(&server, trusting(&ca))).await;
    let f = failed(&attempt);
    assert_eq!(f.kind, FailureKind::Tls, "{f:?}");
    assert!(f.message.contains("client certificate"), "{}", f.message);

    let tls = TlsOptions {
        client_cert_pem: Some(client.cert_pem.as_bytes().to_vec()),
        client_key_pem: Some(client.key_pem.as_bytes().to_vec()),
        ..trusting(&ca)
    };
    let attempt = p.probe(&https_site(&server, tls)).await;
    assert_eq!(&ok(&attempt).body[..], b"hello over tls");
    assert!(server.handshakes() >= 1);
    assert!(server.failed_handshakes() >= 1);

    // The same key as SEC1 (`BEGIN EC PRIVATE KEY`), as `openssl ecparam -genkey` writes it.
    let sec1 = openssl::pkey::PKey::private_key_from_pem(client.key_pem.as_bytes())
        .unwrap()
        .ec_key()
        .unwrap()
        .private_key_to_pem()
        .unwrap();
    assert!(String::from_utf8_lossy(&sec1).contains("BEGIN EC PRIVATE KEY"));
    let tls = TlsOptions {
        client_cert_pem: Some(client.cert_pem.as_bytes().to_vec()),
        client_key_pem: Some(sec1),
        ..trusting(&ca)
    };
    let attempt = p.probe(&https_site(&server, tls)).await;
    assert_eq!(&ok(&attempt).body[..], b"hello over tls");
}

#[tokio::test]
async fn invalid_tls_options_fail_as_tls() {
    let server = TlsServer::start(&support::self_signed("s", &["127.0.0.1"]), None);
    let tls = TlsOptions {
        ca_pem: Some(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n".to_vec()),
        ..TlsOptions::default()
    };
    let f = failed(&prober().probe(&https_site(&server, tls)).await).clone();
    assert_eq!(f.kind, FailureKind::Tls);
    assert!(
        f.message.starts_with("invalid TLS options"),
        "{}",
        f.message
    );
}

/// A body cap far beyond the ceiling (a Site built in code; sites.lua refuses it) with a server
/// that announces a petabyte and never stops: the body stops at the ceiling instead of reserving
/// or growing memory until the allocator aborts the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_body_cap_is_held_to_the_ceiling() {
    const MIB: u64 = 1 << 20;
    let endless = |length: Option<&'static str>| {
        serve(
            "127.0.0.1:0",
            move |_req: Received, mut conn: Conn| async move {
                let headers: Vec<(&str, &str)> = match length {
                    Some(length) => vec![("Content-Length", length)],
                    None => vec![("Connection", "close")],
                };
                if conn.head(200, &headers).await.is_err() {
                    return;
                }
                let block = vec![b'z'; 64 * 1024];
                while conn.write(&block).await.is_ok() {}
            },
        )
    };
    let announced = endless(Some("1000000000000000")).await;
    let unannounced = endless(None).await;
    let p = prober();
    let base = rss_bytes();
    let sampler = RssSampler::start();
    for server in [&announced, &unannounced] {
        for cap in [u64::MAX, 1 << 40] {
            let mut s = with_timeout(site(&server.url("/")), Duration::from_secs(20));
            s.body_cap = cap;
            let attempt = p.probe(&s).await;
            let r = ok(&attempt);
            assert!(r.body_truncated);
            assert_eq!(r.body.len() as u64, sitewatch::config::MAX_BODY_CAP);
        }
    }
    let growth = sampler.peak().saturating_sub(base);
    assert!(
        growth < 128 * MIB,
        "RSS grew by {} MiB reading capped bodies",
        growth / MIB
    );
}

/// A server's Location may carry credentials: they are not kept in the URL the result reports.
#[tokio::test]
async fn credentials_in_a_location_stay_out_of_the_result() {
    let landing = hello_server("127.0.0.1:0").await;
    let target = landing
        .url("/landing")
        .replace("http://", "http://user:hunter2@");
    let first = serve("127.0.0.1:0", move |_req: Received, mut conn: Conn| {
        let target = target.clone();
        async move {
            conn.respond(302, &[("Location", target.as_str())], b"")
                .await
        }
    })
    .await;
    let attempt = prober().probe(&site(&first.url("/"))).await;
    let r = ok(&attempt);
    assert_eq!(r.final_url.as_str(), landing.url("/landing"));
    assert!(!r.final_url.as_str().contains("hunter2"));
    assert_eq!(landing.requests()[0].header("authorization"), None);
}
