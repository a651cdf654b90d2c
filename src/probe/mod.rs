//! One HTTP probe: a fresh connection, timed phase by phase, body read up to a cap.
//!
//! In the data flow this is the step between the scheduler and the assertions: the scheduler
//! calls [`Prober::probe`] when a site is due (once per attempt; retries are the caller's), and
//! the [`Attempt`] it returns — a [`Response`] or a classified [`Failure`], plus [`Timings`] and
//! the server's certificate — feeds the assertions and then the `CheckResult`.
//!
//! # Why not reqwest
//!
//! reqwest reports no phase timings, and its connector does TCP and TLS as one step; it pools
//! connections, so a probe might not connect at all; and it exposes the peer certificate
//! (`tls_info`) only on a response that arrived, not when the exchange fails after the
//! handshake. A monitor needs DNS, TCP connect, TLS handshake, time to first byte and
//! transfer measured separately, a fresh connection per probe, and the certificate of every
//! completed handshake. So each hop is assembled by hand, each step timed on its own:
//!
//! 1. DNS: `tokio::net::lookup_host` (an IP-literal host skips it, `dns_ms = 0`);
//! 2. TCP: `TcpStream::connect` to each resolved address in order (IPv6 and IPv4 as the
//!    resolver returns them) until one accepts, with `TCP_NODELAY`; no Happy Eyeballs, so an
//!    address that silently drops packets costs the rest of the deadline;
//! 3. TLS (https): `tokio_native_tls` with a connector cached per distinct
//!    [`TlsOptions`](crate::config::TlsOptions);
//! 4. HTTP: `hyper::client::conn::http1` over that stream; time to the response head is
//!    `ttfb`, reading the body is `transfer`.
//!
//! Only HTTP/1.1 is spoken (no ALPN, no h2): virtually every server answers it, and one
//! protocol keeps timings comparable across sites; a server that refuses HTTP/1.1 shows up as
//! an `http` failure.
//!
//! # Rules of one attempt
//!
//! - One deadline, `site.timeout`, covers every redirect hop and the body; when it passes the
//!   failure is `timeout` with the phase that was running (whose timing then counts up to the
//!   deadline).
//! - Redirects (301/302/303/307/308 with a `Location`) are followed up to `site.max_redirects`,
//!   each over a fresh connection; a URL seen twice, or one hop too many, fails as
//!   `redirect_loop`. Phase timings are summed over hops; `total_ms` is wall clock. With
//!   `site.follow_redirects` false, or `max_redirects = 0`, none is followed: the first
//!   response is the answer, a 301 read and judged like any other.
//! - The body is read until `site.body_cap` decoded bytes; past it the connection is dropped
//!   (not drained) and the body marked truncated. gzip and deflate are decoded as the bytes
//!   arrive, so a compression bomb costs at most the cap in memory.
//! - What arrived is kept when the attempt fails later: the status and URL of the last
//!   response head ([`Attempt::head`]), and the leaf certificate of the last hop. A handshake
//!   that fails because the certificate is rejected is followed, once the attempt is timed, by
//!   a second handshake that verifies nothing, only to read that certificate (native-tls does
//!   not expose it from the failed one); it gets what remains of the deadline.
//! - The request carries `Host`, `User-Agent` and `Accept-Encoding: gzip, deflate` unless the
//!   site sets its own, and always `Connection: close`. No site-configured header is sent to
//!   another origin after a redirect (the defaults are, for that origin).

mod body;
mod classify;
mod redirect;
mod tls;

pub(crate) use tls::client_identity;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::header::{
    ACCEPT_ENCODING, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST, LOCATION,
    TRANSFER_ENCODING, USER_AGENT,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use url::{Host, Position, Url};

use self::body::{BodySink, Encoding, Fill};
use self::classify::{ErrorFacts, Stage};
use crate::config::{Site, TlsOptions};
use crate::result::{Failure, FailureKind, Phase, Timings};

/// The `User-Agent` a probe sends when the site sets none; pass it to [`Prober::new`] unless
/// the operator configured another.
pub const DEFAULT_USER_AGENT: &str = concat!("sitewatch/", env!("CARGO_PKG_VERSION"));

/// Sent unless the site sets `Accept-Encoding`: the encodings the probe can undo.
const ACCEPT_ENCODING_VALUE: &str = "gzip, deflate";

/// Facts about the leaf certificate the server presented.
#[derive(Debug, Clone, PartialEq)]
pub struct CertInfo {
    pub not_after: DateTime<Utc>,
    pub subject: String,
    pub issuer: String,
}

/// Seconds in a day, for certificate days-left.
const SECONDS_PER_DAY: f64 = 86_400.0;

impl CertInfo {
    /// Days until the certificate expires at `now`, with the fraction (negative once expired).
    /// `expect.cert_days` compares this value; hooks see its floor (whole days) as
    /// `r.cert.days_left`, so 0.5 days left is 0 and half a day past expiry is -1.
    pub fn days_left(&self, now: DateTime<Utc>) -> f64 {
        (self.not_after - now).num_seconds() as f64 / SECONDS_PER_DAY
    }

    /// [`CertInfo::days_left`] rounded down: what hooks see as `r.cert.days_left`.
    pub fn whole_days_left(&self, now: DateTime<Utc>) -> i64 {
        self.days_left(now).floor() as i64
    }
}

/// A response that arrived (any status).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// URL of the final response, after redirects.
    pub final_url: Url,
    /// Header names in lower case, in order of each name's first arrival; a repeated header
    /// appears once per value, next to its other values.
    pub headers: Vec<(String, String)>,
    /// Body after decompression, at most the site's body cap.
    pub body: Bytes,
    pub body_truncated: bool,
    /// Leaf certificate of the final hop, for https.
    pub cert: Option<CertInfo>,
}

/// What one attempt produced: a response or a classified failure, plus the timings either way.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub timings: Timings,
    pub outcome: Result<Response, Failure>,
    /// Leaf certificate of the last hop: set when that hop's handshake completed and the
    /// attempt failed after it, and when the handshake failed because the certificate was
    /// rejected (expired, untrusted, another host's), read then by [`Prober::probe`] over a
    /// second, unverified handshake. On success, equal to [`Response::cert`].
    pub cert: Option<CertInfo>,
    /// Status and URL of the last response head that arrived, kept when the attempt failed
    /// after it: a 200 whose body timed out, the last 302 of a redirect loop. `None` when no
    /// head arrived; on success, the final response's.
    pub head: Option<Head>,
}

/// A response head as it arrived: what a failed attempt still knows about the server's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub status: u16,
    /// The URL that answered with `status`.
    pub url: Url,
}

/// sitewatch's own faults when setting up probing (a site being down is never one).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("invalid User-Agent {user_agent:?}")]
    InvalidUserAgent {
        user_agent: String,
        #[source]
        source: http::header::InvalidHeaderValue,
    },
    #[error("cannot initialise TLS")]
    Tls(#[source] native_tls::Error),
}

/// Runs probes. Build one and share it (`Arc<Prober>`): it holds the TLS connectors, whose
/// construction is far too slow to repeat per probe.
pub struct Prober {
    /// Sent as `User-Agent` unless the site sets one; validated once here.
    user_agent: HeaderValue,
    /// TLS connectors, one per distinct `TlsOptions` seen.
    tls: tls::Connectors,
    /// HTTP/1.1 settings shared by every connection.
    http1: hyper::client::conn::http1::Builder,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("user_agent", &self.user_agent)
            .finish_non_exhaustive()
    }
}

impl Prober {
    /// `user_agent` is sent unless a site sets its own (normally [`DEFAULT_USER_AGENT`]).
    pub fn new(user_agent: &str) -> Result<Prober, ProbeError> {
        let user_agent_value =
            HeaderValue::from_str(user_agent).map_err(|source| ProbeError::InvalidUserAgent {
                user_agent: user_agent.to_owned(),
                source,
            })?;
        let mut http1 = hyper::client::conn::http1::Builder::new();
        http1.title_case_headers(true);
        Ok(Prober {
            user_agent: user_agent_value,
            tls: tls::Connectors::new().map_err(ProbeError::Tls)?,
            http1,
        })
    }

    /// One attempt at `site`: every redirect hop and the body, within `site.timeout`.
    #[tracing::instrument(level = "debug", skip_all, fields(site = %site.name))]
    pub async fn probe(&self, site: &Site) -> Attempt {
        let started = Instant::now();
        let deadline = started
            .checked_add(site.timeout)
            .unwrap_or_else(|| started + Duration::from_secs(365 * 24 * 3600));
        let mut progress = Progress::new();
        let result = tokio::time::timeout_at(deadline.into(), self.run(site, &mut progress)).await;
        // A phase still open here was interrupted (deadline or error): it counts until now.
        progress.end();
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(_elapsed) => Err(classify::timeout(progress.phase, site.timeout)),
        };
        let mut timings = progress.timings;
        timings.total_ms = millis(started.elapsed());
        if let Err(failure) = &outcome {
            tracing::debug!(kind = failure.kind.as_str(), message = %failure.message, "probe failed");
        }
        // After the timings: reading the rejected leaf is not part of what the site costs.
        let cert = match progress.rejected {
            Some(url) => self.rejected_leaf(site, &url, deadline).await,
            None => progress.cert,
        };
        Attempt {
            timings,
            outcome,
            cert,
            head: progress.head,
        }
    }

    /// The leaf certificate a server presented but verification rejected: a second handshake
    /// to `url`, verifying nothing, made only to read it (native-tls gives no access to the
    /// certificate of a failed handshake). An expired certificate is exactly when its date
    /// matters. Bounded by what remains of the attempt's deadline; any failure gives `None`.
    async fn rejected_leaf(&self, site: &Site, url: &Url, deadline: Instant) -> Option<CertInfo> {
        let read = async {
            let host = url.host()?;
            let port = url.port_or_known_default()?;
            let tcp = connect(host, port, &mut Progress::new()).await.ok()?;
            let unverified = TlsOptions {
                insecure: true,
                ..TlsOptions::clone(&site.tls)
            };
            let connector = self.tls.get(&unverified).ok()?;
            let stream = connector.connect(tls_name(url), tcp).await.ok()?;
            tls::peer_cert_info(&stream)
        };
        tokio::time::timeout_at(deadline.into(), read)
            .await
            .ok()
            .flatten()
    }

    /// The redirect loop: one hop per iteration until a final response or a failure.
    async fn run(&self, site: &Site, p: &mut Progress) -> Result<Response, Failure> {
        let mut url = site.url.clone();
        url.set_fragment(None);
        let mut method = site.request.method.clone();
        let mut send_body = true;
        // URLs already requested, in order; only allocated when a redirect happens.
        let mut chain: Vec<Url> = Vec::new();
        loop {
            let hop = HopRequest {
                url: &url,
                method: &method,
                body: if send_body {
                    site.request.body.as_ref()
                } else {
                    None
                },
                body_dropped: !send_body,
                foreign: !redirect::same_origin(&url, &site.url),
            };
            match self.hop(site, &hop, p).await? {
                HopOutcome::Final(done) => {
                    return Ok(Response {
                        status: done.status,
                        final_url: url,
                        headers: done.headers,
                        body: done.body,
                        body_truncated: done.truncated,
                        cert: p.cert.clone(),
                    });
                }
                HopOutcome::Redirect { status, next } => {
                    if next == url || chain.contains(&next) {
                        chain.push(url);
                        return Err(classify::redirect_loop(&chain, &next));
                    }
                    if chain.len() >= usize::try_from(site.max_redirects).unwrap_or(usize::MAX) {
                        chain.push(url);
                        return Err(classify::too_many_redirects(
                            site.max_redirects,
                            &chain,
                            &next,
                        ));
                    }
                    let (next_method, keep_body) = redirect::next_method(status, &method);
                    method = next_method;
                    send_body &= keep_body;
                    chain.push(std::mem::replace(&mut url, next));
                }
            }
        }
    }

    /// One request over a fresh connection.
    async fn hop(
        &self,
        site: &Site,
        req: &HopRequest<'_>,
        p: &mut Progress,
    ) -> Result<HopOutcome, Failure> {
        p.cert = None;
        let url = req.url;
        let host = url.host().ok_or_else(|| Failure {
            kind: FailureKind::Http,
            phase: None,
            message: format!("URL has no host: {url}"),
        })?;
        let port = url.port_or_known_default().unwrap_or(80);
        let tcp = connect(host, port, p).await?;
        if url.scheme() != "https" {
            return self.exchange(tcp, site, req, p).await;
        }
        let name = tls_name(url);
        p.begin(Phase::Tls);
        let connector = self
            .tls
            .get(&site.tls)
            .map_err(|e| classify::tls_config(&e))?;
        let stream = connector.connect(name, tcp).await.map_err(|e| {
            let text = e.to_string();
            if classify::certificate_rejected(&text) {
                p.rejected = Some(url.clone());
            }
            classify::tls_handshake(name, &text)
        })?;
        p.end();
        p.cert = tls::peer_cert_info(&stream);
        self.exchange(stream, site, req, p).await
    }

    /// Sends the request and reads the response over an established stream.
    async fn exchange<S>(
        &self,
        io: S,
        site: &Site,
        req: &HopRequest<'_>,
        p: &mut Progress,
    ) -> Result<HopOutcome, Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let request = self.build_request(site, req)?;
        let (mut sender, conn) = self
            .http1
            .handshake::<_, Full<Bytes>>(TokioIo::new(io))
            .await
            .map_err(|e| http_failure(Stage::Head, &e))?;
        // The connection is driven here, not spawned: dropping it (cap reached, deadline,
        // redirect) closes the socket at once, and no task outlives the probe.
        let mut conn = pin!(conn);
        let mut conn_done = false;

        p.begin(Phase::Ttfb);
        let response = drive(conn.as_mut(), &mut conn_done, sender.send_request(request))
            .await
            .map_err(|e| http_failure(Stage::Head, &e))?;
        p.end();

        let status = response.status().as_u16();
        p.head = Some(Head {
            status,
            url: req.url.clone(),
        });
        if follows_redirects(site) && redirect::is_redirect(status) {
            if let Some(location) = response.headers().get(LOCATION) {
                let next = redirect::resolve_location(req.url, location).map_err(|why| {
                    classify::bad_redirect(
                        status,
                        &String::from_utf8_lossy(location.as_bytes()),
                        why,
                    )
                })?;
                return Ok(HopOutcome::Redirect { status, next });
            }
        }

        p.begin(Phase::Transfer);
        let (parts, mut body) = response.into_parts();
        let encoding = Encoding::from_header(parts.headers.get(CONTENT_ENCODING));
        // Validation caps body_cap; a Site built in code is held to the same ceiling.
        let cap = site.body_cap.min(crate::config::MAX_BODY_CAP);
        let mut sink = BodySink::new(encoding, cap, body.size_hint().exact());
        let truncated = loop {
            match drive(conn.as_mut(), &mut conn_done, body.frame()).await {
                None => break false,
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers
                    };
                    match sink.push(data) {
                        Ok(Fill::More) => {}
                        Ok(Fill::Full) => break true,
                        Err(e) => return Err(classify::decode(&e)),
                    }
                }
                Some(Err(e)) => return Err(http_failure(Stage::Body, &e)),
            }
        };
        let (bytes, truncated) = if truncated {
            (sink.into_truncated(), true)
        } else {
            sink.finish().map_err(|e| classify::decode(&e))?
        };
        p.end();
        Ok(HopOutcome::Final(FinalResponse {
            status,
            headers: header_list(&parts.headers),
            body: bytes,
            truncated,
        }))
    }

    fn build_request(
        &self,
        site: &Site,
        req: &HopRequest<'_>,
    ) -> Result<http::Request<Full<Bytes>>, Failure> {
        let url = req.url;
        let invalid = |what: &str| Failure {
            kind: FailureKind::Http,
            phase: None,
            message: format!("cannot build a request for {url}: invalid {what}"),
        };
        let target = &url[Position::BeforePath..Position::AfterQuery];
        let uri = http::Uri::try_from(target).map_err(|_| invalid("path"))?;
        let body = req.body.cloned().map(Full::new).unwrap_or_default();
        let mut request = http::Request::new(body);
        *request.method_mut() = req.method.clone();
        *request.uri_mut() = uri;

        let headers = request.headers_mut();
        headers.reserve(site.request.headers.len() + 4);
        for (name, value) in &site.request.headers {
            if !forwarded(name, req) {
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        if !headers.contains_key(HOST) {
            let authority = &url[Position::BeforeHost..Position::AfterPort];
            let value = HeaderValue::from_str(authority).map_err(|_| invalid("host"))?;
            headers.insert(HOST, value);
        }
        if !headers.contains_key(USER_AGENT) {
            headers.insert(USER_AGENT, self.user_agent.clone());
        }
        if !headers.contains_key(ACCEPT_ENCODING) {
            headers.insert(
                ACCEPT_ENCODING,
                HeaderValue::from_static(ACCEPT_ENCODING_VALUE),
            );
        }
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        Ok(request)
    }
}

/// Whether a redirect is followed at all: `max_redirects = 0` means what
/// `follow_redirects = false` does, judge the first response as it arrived.
fn follows_redirects(site: &Site) -> bool {
    site.follow_redirects && site.max_redirects > 0
}

/// The name TLS verifies for `url`: a domain, or an IP address without the brackets of the URL.
fn tls_name(url: &Url) -> &str {
    url.host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// Whether a site-configured header goes out on this hop. None goes to another origin: any of
/// them may be a credential (`X-Api-Key`, a session header), and the other origin is whoever
/// the redirect says.
fn forwarded(name: &HeaderName, req: &HopRequest<'_>) -> bool {
    if name == CONNECTION || req.foreign {
        return false;
    }
    if req.body_dropped
        && [
            CONTENT_LENGTH,
            CONTENT_TYPE,
            CONTENT_ENCODING,
            TRANSFER_ENCODING,
        ]
        .contains(name)
    {
        return false;
    }
    true
}

/// What one hop sends.
struct HopRequest<'a> {
    url: &'a Url,
    method: &'a Method,
    body: Option<&'a Bytes>,
    /// A redirect turned the request into a body-less GET: drop the body's headers too.
    body_dropped: bool,
    /// This hop leaves the site's origin: every site-configured header stays behind.
    foreign: bool,
}

enum HopOutcome {
    Final(FinalResponse),
    Redirect { status: u16, next: Url },
}

struct FinalResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
    truncated: bool,
}

/// Resolves `host` (unless it is an IP literal) and connects to the first address that
/// accepts.
async fn connect(host: Host<&str>, port: u16, p: &mut Progress) -> Result<TcpStream, Failure> {
    match host {
        Host::Ipv4(ip) => {
            p.record(Phase::Dns, Duration::ZERO);
            connect_any(std::iter::once(SocketAddr::new(ip.into(), port)), p).await
        }
        Host::Ipv6(ip) => {
            p.record(Phase::Dns, Duration::ZERO);
            connect_any(std::iter::once(SocketAddr::new(ip.into(), port)), p).await
        }
        Host::Domain(name) => {
            p.begin(Phase::Dns);
            let addrs = tokio::net::lookup_host((name, port))
                .await
                .map_err(|e| classify::dns(name, &e))?;
            p.end();
            let mut addrs = addrs.peekable();
            if addrs.peek().is_none() {
                return Err(classify::no_addresses(name));
            }
            connect_any(addrs, p).await
        }
    }
}

async fn connect_any(
    addrs: impl Iterator<Item = SocketAddr>,
    p: &mut Progress,
) -> Result<TcpStream, Failure> {
    p.begin(Phase::Connect);
    let mut last: Option<(SocketAddr, std::io::Error)> = None;
    let mut others = 0;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                // Requests go out in one write; waiting for Nagle would only add latency.
                let _ = stream.set_nodelay(true);
                p.end();
                return Ok(stream);
            }
            Err(e) => {
                if last.is_some() {
                    others += 1;
                }
                last = Some((addr, e));
            }
        }
    }
    let (addr, err) = last.expect("connect_any is called with at least one address");
    Err(classify::connect(addr, &err, others))
}

/// Awaits `fut` while also driving the HTTP connection that feeds it. The connection is polled
/// first so data it reads reaches `fut` in the same wake-up; once it has finished it is left
/// alone (it has handed `fut` its result or error by then).
async fn drive<C, F>(mut conn: Pin<&mut C>, conn_done: &mut bool, fut: F) -> F::Output
where
    C: Future<Output = hyper::Result<()>>,
    F: Future,
{
    let mut fut = pin!(fut);
    std::future::poll_fn(move |cx| {
        if !*conn_done && conn.as_mut().poll(cx).is_ready() {
            *conn_done = true;
        }
        fut.as_mut().poll(cx)
    })
    .await
}

fn http_failure(stage: Stage, err: &hyper::Error) -> Failure {
    classify::http(stage, &ErrorFacts::from_hyper(err))
}

fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Milliseconds with microsecond resolution (what the clock can honestly claim), so results
/// read `0.648`, not `0.6483479999999999`.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// Timings and state of the attempt so far; kept outside the future the deadline cancels, so
/// a timeout still knows which phase was running and what had been measured.
struct Progress {
    timings: Timings,
    /// The phase running, or the last one that ran.
    phase: Phase,
    /// When the running phase started; `None` between phases.
    since: Option<Instant>,
    /// Certificate of the current hop's completed handshake.
    cert: Option<CertInfo>,
    /// The last response head that arrived, on any hop.
    head: Option<Head>,
    /// The hop whose handshake failed because its certificate was rejected: the leaf is read
    /// once the attempt is over.
    rejected: Option<Url>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            timings: Timings::default(),
            phase: Phase::Dns,
            since: None,
            cert: None,
            head: None,
            rejected: None,
        }
    }

    fn begin(&mut self, phase: Phase) {
        self.phase = phase;
        self.since = Some(Instant::now());
    }

    /// Closes the running phase, if any, adding its duration to that phase's total.
    fn end(&mut self) {
        if let Some(since) = self.since.take() {
            self.record(self.phase, since.elapsed());
        }
    }

    fn record(&mut self, phase: Phase, spent: Duration) {
        let t = &mut self.timings;
        let slot = match phase {
            Phase::Dns => &mut t.dns_ms,
            Phase::Connect => &mut t.connect_ms,
            Phase::Tls => &mut t.tls_ms,
            Phase::Ttfb => &mut t.ttfb_ms,
            Phase::Transfer => &mut t.transfer_ms,
        };
        *slot = Some(slot.unwrap_or(0.0) + millis(spent));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prober_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Prober>();
    }

    #[test]
    fn bad_user_agent_is_rejected() {
        assert!(matches!(
            Prober::new("bad\nagent"),
            Err(ProbeError::InvalidUserAgent { .. })
        ));
        assert!(Prober::new(DEFAULT_USER_AGENT).is_ok());
    }

    #[test]
    fn progress_sums_phases() {
        let mut p = Progress::new();
        p.record(Phase::Ttfb, Duration::from_millis(10));
        p.record(Phase::Ttfb, Duration::from_millis(5));
        p.record(Phase::Dns, Duration::ZERO);
        assert_eq!(p.timings.ttfb_ms, Some(15.0));
        assert_eq!(p.timings.dns_ms, Some(0.0));
        assert_eq!(p.timings.tls_ms, None);
        p.begin(Phase::Transfer);
        p.end();
        p.end();
        assert!(p.timings.transfer_ms.is_some());
    }

    #[test]
    fn site_headers_filtered_per_hop() {
        use http::header::AUTHORIZATION;
        let url = Url::parse("http://a.test/").unwrap();
        let req = |foreign, body_dropped| HopRequest {
            url: &url,
            method: &Method::GET,
            body: None,
            body_dropped,
            foreign,
        };
        let custom = HeaderName::from_static("x-api-key");
        let cases = [
            (CONNECTION, false, false, false),
            (AUTHORIZATION, false, false, true),
            (AUTHORIZATION, true, false, false),
            (HOST, true, false, false),
            (CONTENT_TYPE, false, true, false),
            (CONTENT_TYPE, false, false, true),
            (CONTENT_TYPE, true, false, false),
            (USER_AGENT, false, true, true),
            (USER_AGENT, true, false, false),
            (custom.clone(), false, false, true),
            (custom, true, false, false),
        ];
        for (name, foreign, dropped, want) in cases {
            assert_eq!(forwarded(&name, &req(foreign, dropped)), want, "{name}");
        }
    }
}
