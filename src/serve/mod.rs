//! `sitewatch serve`: the status page, the JSON API behind it, and badges — read-only, from
//! PostgreSQL and `sites.lua`, never writing anything.
//!
//! ```text
//!  GET /                        overview (html::overview)   ◄─ api::overview   ◄─ rollup counts,
//!  GET /api/v1/sites            the same as JSON                                  site_state, incidents
//!  GET /site/{site}             site page (html::site)      ◄─ api::site, series, results
//!  GET /api/v1/sites/{site}[/daily|/hourly|/results], /api/v1/incidents
//!  GET /badge/{site}/status.svg | uptime/{window}.svg | p99/{window}.svg   (svg::badge, cacheable)
//!  GET /static/sitewatch.css | time.js                       compiled in
//! ```
//!
//! Safe by default: it binds to loopback unless given another address; every method but GET
//! and HEAD answers 405; every answer carries a strict Content-Security-Policy (no inline
//! script or style anywhere), `nosniff` and `Referrer-Policy: no-referrer`; a site with
//! `status_page = false` answers 404 everywhere, like an unknown one; a site's URL is shown
//! without userinfo and query string, its request headers never. `docs/api.md` documents the
//! endpoints and their fields.

pub mod api;
pub mod html;
pub mod svg;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Config, ConfigErrors};
use crate::insight::rollup::Grain;
use crate::settings::DatabaseSettings;
use crate::store::{self, StoreError};
use api::{ApiError, Window};

/// Where `serve` listens unless told otherwise: loopback only, so a status page is never
/// public by accident.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";

/// PostgreSQL connections the server spreads requests' queries over; each carries many queries
/// at once (tokio-postgres pipelines them, PostgreSQL runs them one after the other). One more
/// is kept for background reads (`Db::background`).
pub const CONNECTIONS: usize = 4;

/// Longest a query of the server may run: a read that slow is a bug or an overloaded
/// database, and a page that never answers helps no one.
pub const STATEMENT_TIMEOUT_MS: u32 = 5_000;

/// How long browsers and proxies may reuse a badge.
pub const BADGE_MAX_AGE_SECS: u32 = 60;

/// Every answer's Content-Security-Policy: nothing but the server's own stylesheet, script
/// and images (and `data:` images).
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
    script-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const CSS: &str = include_str!("static/sitewatch.css");
const TIME_JS: &str = include_str!("static/time.js");

/// What `serve` needs besides the database settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    pub config_path: PathBuf,
}

/// Why `serve` stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{path}: invalid configuration")]
    Config {
        path: PathBuf,
        #[source]
        errors: ConfigErrors,
    },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the status page server failed")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A few PostgreSQL connections, made on first use and again after one breaks (the database
/// restarted): the server keeps answering once it is back.
#[derive(Clone)]
pub struct Db {
    inner: Arc<DbInner>,
}

type Slot = tokio::sync::Mutex<Option<Arc<Client>>>;

struct DbInner {
    settings: DatabaseSettings,
    /// Requests' connections, round robin.
    slots: Vec<Slot>,
    /// Background reads' own (the overview cache's refresh): a connection runs its queries one
    /// after the other, so a request's query queued behind a refresh (0.3–1.3 s on a loaded
    /// machine) would wait for it.
    background: Slot,
    next: AtomicUsize,
}

/// Session settings of every connection. `jit = off`: the server's queries are short scans
/// that JIT compilation only slows down, by more than they take once their cost estimate
/// crosses `jit_above_cost` (the hourly counts of 1,000 sites over 40 hours: 200 ms with JIT,
/// 45 ms without).
const SESSION: &str = "SET default_transaction_read_only = on; SET jit = off";

/// Also on the background connection: no parallel workers, so a refresh keeps to one core and
/// leaves the others to requests.
const BACKGROUND_SESSION: &str = "SET max_parallel_workers_per_gather = 0";

impl Db {
    pub fn new(settings: DatabaseSettings) -> Db {
        Db {
            inner: Arc::new(DbInner {
                settings,
                slots: (0..CONNECTIONS)
                    .map(|_| tokio::sync::Mutex::new(None))
                    .collect(),
                background: tokio::sync::Mutex::new(None),
                next: AtomicUsize::new(0),
            }),
        }
    }

    /// A connection for a request, round robin; a closed one is replaced.
    pub async fn client(&self) -> Result<Arc<Client>, StoreError> {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.slots.len();
        self.connection(&self.inner.slots[i], "").await
    }

    /// Opens the requests' connections in the background, so the first requests do not wait
    /// for TLS and authentication; one that fails is opened again on use.
    pub fn warm(&self) {
        let db = self.clone();
        tokio::spawn(async move {
            let opened = db.inner.slots.iter().map(|slot| db.connection(slot, ""));
            for result in futures::future::join_all(opened).await {
                if let Err(error) = result {
                    tracing::warn!(error = %crate::error::ErrorChain(&error), "the status page cannot connect to PostgreSQL yet");
                    break;
                }
            }
        });
    }

    /// The connection of background reads, apart from the requests' ones.
    pub async fn background(&self) -> Result<Arc<Client>, StoreError> {
        self.connection(&self.inner.background, BACKGROUND_SESSION)
            .await
    }

    async fn connection(&self, slot: &Slot, extra: &str) -> Result<Arc<Client>, StoreError> {
        let mut slot = slot.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let client = store::connect(&self.inner.settings).await?;
        client
            .batch_execute(&format!(
                "SET statement_timeout = {STATEMENT_TIMEOUT_MS}; {SESSION}; {extra}"
            ))
            .await
            .map_err(|source| StoreError::Query {
                context: "setting up a status page connection",
                source,
            })?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }
}

/// The time a request is answered as of: the wall clock, or a fixed time in tests.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// What every handler shares.
#[derive(Clone)]
pub struct ServeState {
    pub config: Arc<Config>,
    pub db: Db,
    pub cache: Arc<api::CountsCache>,
    pub clock: Clock,
}

impl ServeState {
    pub fn new(config: Config, db: Db) -> ServeState {
        ServeState {
            config: Arc::new(config),
            db,
            cache: Arc::default(),
            clock: Arc::new(Utc::now),
        }
    }
}

/// Serves `options.config_path`'s sites on `options.addr` until `shutdown`.
pub async fn serve(
    db: &DatabaseSettings,
    options: ServeOptions,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let config = config::load(&options.config_path).map_err(|errors| ServeError::Config {
        path: options.config_path.clone(),
        errors,
    })?;
    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: options.addr,
            source,
        })?;
    let addr = listener.local_addr().unwrap_or(options.addr);
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the status page listens beyond loopback: anyone who can reach it can read it");
    }
    let visible = api::visible(&config).len();
    tracing::info!(%addr, sites = visible, "status page at http://{addr}/");
    let state = ServeState::new(config, Db::new(db.clone()));
    state.db.warm();
    state.cache.warm(&state.db, &state.config, (state.clock)());
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(ServeError::Serve)
}

/// Every route, behind the method guard and the security headers.
pub fn router(state: ServeState) -> Router {
    Router::new()
        .route("/", get(overview_page))
        .route("/site/{site}", get(site_page))
        .route("/api/v1/sites", get(sites_json))
        .route("/api/v1/sites/{site}", get(site_json))
        .route("/api/v1/sites/{site}/daily", get(daily_json))
        .route("/api/v1/sites/{site}/hourly", get(hourly_json))
        .route("/api/v1/sites/{site}/results", get(results_json))
        .route("/api/v1/incidents", get(incidents_json))
        .route("/badge/{site}/status.svg", get(status_badge))
        .route("/badge/{site}/uptime/{window}", get(uptime_badge))
        .route("/badge/{site}/p99/{window}", get(p99_badge))
        .route("/static/sitewatch.css", get(css))
        .route("/static/time.js", get(time_js))
        .fallback(not_found)
        .with_state(state)
        .layer(middleware::from_fn(guard))
}

/// GET and HEAD only (405 with `Allow` otherwise, before any routing), and the security
/// headers on every answer.
async fn guard(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let path = request.uri().path().to_owned();
    let mut response = if request.method() == Method::GET || request.method() == Method::HEAD {
        next.run(request).await
    } else {
        let mut response = (
            StatusCode::METHOD_NOT_ALLOWED,
            "read-only: GET and HEAD only\n",
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        response
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-cache"));
    tracing::debug!(
        path,
        status = response.status().as_u16(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "answered"
    );
    response
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An [`ApiError`] answered as JSON (API), HTML (pages) or text (badges).
enum Failure {
    Json(ApiError),
    Html(ApiError),
    Text(ApiError),
}

fn status_of(error: &ApiError) -> StatusCode {
    match error {
        ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ApiError::Report(e) if e.is_invalid_request() => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (Failure::Json(error) | Failure::Html(error) | Failure::Text(error)) = &self;
        let status = status_of(error);
        let message = if status.is_server_error() {
            tracing::error!(error = %crate::error::ErrorChain(error), "status page request failed");
            "the status page cannot read its database right now".to_owned()
        } else {
            error.to_string()
        };
        match self {
            Failure::Json(_) => {
                (status, Json(serde_json::json!({ "error": message }))).into_response()
            }
            Failure::Html(_) => (status, html::error(status.as_u16(), &message)).into_response(),
            Failure::Text(_) => (status, format!("{message}\n")).into_response(),
        }
    }
}

async fn not_found() -> Response {
    Failure::Html(ApiError::NotFound("no such page".into())).into_response()
}

// ---------------------------------------------------------------------------------------------
// Pages

#[derive(Deserialize)]
struct PageQuery {
    page: Option<u32>,
}

async fn overview_page(
    State(state): State<ServeState>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Failure> {
    let page = match query {
        Ok(Query(q)) => q.page.unwrap_or(1),
        Err(rejection) => return Err(Failure::Html(ApiError::BadRequest(rejection.body_text()))),
    };
    let now = (state.clock)();
    let overview = api::overview(&state.db, &state.cache, &state.config, now)
        .await
        .map_err(Failure::Html)?;
    let mut rows: Vec<&api::SiteSummary> = overview.json.sites.iter().collect();
    rows.sort_by_key(|s| html::rank(s));
    let pages = rows.len().div_ceil(html::PAGE_SIZE).max(1);
    if page == 0 || page as usize > pages {
        return Err(Failure::Html(ApiError::BadRequest(format!(
            "page must be between 1 and {pages}"
        ))));
    }
    let start = (page as usize - 1) * html::PAGE_SIZE;
    let shown: Vec<&api::SiteSummary> =
        rows.into_iter().skip(start).take(html::PAGE_SIZE).collect();
    Ok(html::overview(&overview, &shown, page as usize, pages).into_response())
}

async fn site_page(
    State(state): State<ServeState>,
    Path(name): Path<String>,
) -> Result<Response, Failure> {
    let site = api::find(&state.config, &name).map_err(Failure::Html)?;
    let now = (state.clock)();
    let (json, daily, hourly, results) = tokio::try_join!(
        api::site(&state.db, &state.config, site, now),
        api::series(&state.db, site, Grain::Day, api::BAR_DAYS, now),
        api::series(&state.db, site, Grain::Hour, 48, now),
        api::results(&state.db, site, 20),
    )
    .map_err(Failure::Html)?;
    Ok(html::site(&html::SitePage {
        site: &json,
        daily: &daily.buckets,
        hourly: &hourly.buckets,
        results: &results.results,
    })
    .into_response())
}

// ---------------------------------------------------------------------------------------------
// JSON

async fn sites_json(State(state): State<ServeState>) -> Result<Response, Failure> {
    let now = (state.clock)();
    let overview = api::overview(&state.db, &state.cache, &state.config, now)
        .await
        .map_err(Failure::Json)?;
    Ok(Json(overview.json).into_response())
}

async fn site_json(
    State(state): State<ServeState>,
    Path(name): Path<String>,
) -> Result<Response, Failure> {
    let site = api::find(&state.config, &name).map_err(Failure::Json)?;
    let json = api::site(&state.db, &state.config, site, (state.clock)())
        .await
        .map_err(Failure::Json)?;
    Ok(Json(json).into_response())
}

/// Query parameters of the series and lists. Numbers that do not fit answer 400 (axum's
/// rejection), numbers out of range 400 from `api`.
#[derive(Deserialize)]
struct Params {
    days: Option<i64>,
    hours: Option<i64>,
    limit: Option<i64>,
}

type ParamsResult = Result<Query<Params>, axum::extract::rejection::QueryRejection>;

fn params(query: ParamsResult) -> Result<Params, Failure> {
    query
        .map(|Query(p)| p)
        .map_err(|r| Failure::Json(ApiError::BadRequest(r.body_text())))
}

async fn daily_json(
    State(state): State<ServeState>,
    Path(name): Path<String>,
    query: ParamsResult,
) -> Result<Response, Failure> {
    let p = params(query)?;
    let site = api::find(&state.config, &name).map_err(Failure::Json)?;
    let days = p.days.unwrap_or(api::BAR_DAYS);
    let json = api::series(&state.db, site, Grain::Day, days, (state.clock)())
        .await
        .map_err(Failure::Json)?;
    Ok(Json(json).into_response())
}

async fn hourly_json(
    State(state): State<ServeState>,
    Path(name): Path<String>,
    query: ParamsResult,
) -> Result<Response, Failure> {
    let p = params(query)?;
    let site = api::find(&state.config, &name).map_err(Failure::Json)?;
    let hours = p.hours.unwrap_or(48);
    let json = api::series(&state.db, site, Grain::Hour, hours, (state.clock)())
        .await
        .map_err(Failure::Json)?;
    Ok(Json(json).into_response())
}

async fn results_json(
    State(state): State<ServeState>,
    Path(name): Path<String>,
    query: ParamsResult,
) -> Result<Response, Failure> {
    let p = params(query)?;
    let site = api::find(&state.config, &name).map_err(Failure::Json)?;
    let json = api::results(&state.db, site, p.limit.unwrap_or(50))
        .await
        .map_err(Failure::Json)?;
    Ok(Json(json).into_response())
}

async fn incidents_json(
    State(state): State<ServeState>,
    query: ParamsResult,
) -> Result<Response, Failure> {
    let limit = params(query)?.limit.unwrap_or(50);
    if !(1..=api::MAX_LIMIT).contains(&limit) {
        return Err(Failure::Json(ApiError::BadRequest(format!(
            "limit must be between 1 and {}",
            api::MAX_LIMIT
        ))));
    }
    let json = api::all_incidents(&state.db, &state.config, limit, (state.clock)())
        .await
        .map_err(Failure::Json)?;
    Ok(Json(json).into_response())
}

// ---------------------------------------------------------------------------------------------
// Badges

/// `30d.svg` → the window; anything else is a 400.
fn badge_window(segment: &str) -> Result<Window, Failure> {
    let name = segment.strip_suffix(".svg").ok_or_else(|| {
        Failure::Text(ApiError::BadRequest(
            "badge paths end in .svg, e.g. uptime/30d.svg".into(),
        ))
    })?;
    Window::parse(name).map_err(Failure::Text)
}

/// An SVG answer that browsers and proxies may keep for [`BADGE_MAX_AGE_SECS`], with an ETag
/// (the body's digest) so a revalidation costs a 304.
fn badge_response(svg: String, headers: &HeaderMap) -> Response {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(svg.as_bytes());
    let etag = format!("\"{}\"", hex::encode(&digest[..12]));
    let cache = format!("public, max-age={BADGE_MAX_AGE_SECS}");
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8")],
            svg,
        )
            .into_response()
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&cache) {
        h.insert(header::CACHE_CONTROL, v);
    }
    response
}

async fn status_badge(
    State(state): State<ServeState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let site = api::find(&state.config, &name).map_err(Failure::Text)?;
    let now = (state.clock)();
    let client = state
        .db
        .client()
        .await
        .map_err(|e| Failure::Text(e.into()))?;
    let row = client
        .query_opt(
            "SELECT outcome FROM site_state WHERE site = $1",
            &[&site.name],
        )
        .await
        .map_err(|source| {
            Failure::Text(ApiError::Query {
                context: "reading site_state",
                source,
            })
        })?;
    let outcome: Option<String> = row.map(|r| r.get(0));
    let (value, colour) = match (
        state.config.maintenance_at(&site.name, now),
        outcome.as_deref(),
    ) {
        (Some(_), _) => ("maintenance", "#1565c0"),
        (None, Some("up")) => ("up", svg::Band::Good.colour()),
        (None, Some("degraded")) => ("degraded", svg::Band::Major.colour()),
        (None, Some("down")) => ("down", svg::Band::Bad.colour()),
        _ => ("no data", svg::Band::None.colour()),
    };
    Ok(badge_response(
        svg::badge(&site.name, value, colour),
        &headers,
    ))
}

async fn uptime_badge(
    State(state): State<ServeState>,
    Path((name, window)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let window = badge_window(&window)?;
    let site = api::find(&state.config, &name).map_err(Failure::Text)?;
    let summary = window_summary(&state, site, window).await?;
    let uptime = summary.uptime_pct();
    let value = match uptime {
        Some(_) => format!("{} %", svg::pct(uptime)),
        None => "no data".into(),
    };
    let label = format!("uptime {}", window.name());
    Ok(badge_response(
        svg::badge(&label, &value, svg::Band::of(uptime).colour()),
        &headers,
    ))
}

async fn p99_badge(
    State(state): State<ServeState>,
    Path((name, window)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    let window = badge_window(&window)?;
    let site = api::find(&state.config, &name).map_err(Failure::Text)?;
    let summary = window_summary(&state, site, window).await?;
    let p99 = summary.total_hist.quantile(0.99);
    // Against the site's own latency objective when it has one: green within, red beyond.
    let bound = site
        .slo
        .as_ref()
        .and_then(|slo| slo.latency.as_ref())
        .map(|l| l.max.as_secs_f64() * 1e3);
    let colour = match (p99, bound) {
        (None, _) => svg::Band::None.colour(),
        (Some(v), Some(max)) if v > max => svg::Band::Bad.colour(),
        _ => svg::Band::Good.colour(),
    };
    let label = format!("p99 {}", window.name());
    Ok(badge_response(
        svg::badge(&label, &svg::ms(p99), colour),
        &headers,
    ))
}

async fn window_summary(
    state: &ServeState,
    site: &config::Site,
    window: Window,
) -> Result<crate::insight::rollup::Summary, Failure> {
    let now = (state.clock)();
    let client = state
        .db
        .client()
        .await
        .map_err(|e| Failure::Text(e.into()))?;
    let mut reports = crate::report::report(&client, &[site], &window.period(now), now)
        .await
        .map_err(|e| Failure::Text(e.into()))?;
    Ok(reports.pop().map(|r| r.summary).unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// Static files

async fn css() -> Response {
    static_file("text/css; charset=utf-8", CSS)
}

async fn time_js() -> Response {
    static_file("text/javascript; charset=utf-8", TIME_JS)
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}
