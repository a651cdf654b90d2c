//! Logs (tracing to stderr, text or JSON) and the Prometheus endpoint.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sitewatch::metrics::SiteMetrics;

use crate::cli::LogFormat;

/// Histogram buckets (seconds) for probe durations, schedule lag and batch latency.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often the recorder folds histogram samples into their buckets (the exporter's default).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot serve metrics on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install the metrics recorder")]
    Install(#[source] metrics_exporter_prometheus::BuildError),
}

/// Serves `/metrics` on `addr` (nothing when `None`): the `metrics` recorder's output, every
/// metric described up front, followed by the per-site series of `sites`. Port 0 picks a free
/// port; the log line says which. Needs a running Tokio runtime.
pub async fn serve_metrics(
    addr: Option<SocketAddr>,
    sites: SiteMetrics,
) -> Result<(), MetricsError> {
    let Some(addr) = addr else { return Ok(()) };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(SECONDS_BUCKETS)
        .and_then(|b| b.install_recorder())
        .map_err(MetricsError::Install)?;
    sitewatch::metrics::describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP_INTERVAL).await;
            upkeep.run_upkeep();
        }
    });
    let scrape = move || {
        let (handle, sites) = (handle.clone(), sites.clone());
        async move {
            // The recorder's own series, then the sites' a chunk at a time (see
            // `SiteMetrics::chunks`), made as the response is written.
            let chunks = std::iter::once(handle.render()).chain(sites.chunks());
            let body = axum::body::Body::from_stream(futures::stream::iter(
                chunks.map(Ok::<_, std::convert::Infallible>),
            ));
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                body,
            )
        }
    };
    let router = axum::Router::new().route("/metrics", axum::routing::get(scrape));
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "the metrics endpoint stopped");
        }
    });
    tracing::info!(addr = %bound, "serving Prometheus metrics");
    Ok(())
}

/// Logs on stderr: text (coloured only on a terminal, and never with `NO_COLOR` set) or JSON.
/// Writes go through [`LossyStderr`], so a full disk or a closed pipe never stops monitoring.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(|| LossyStderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    JSON_LOGS.store(format == LogFormat::Json, Ordering::Relaxed);
}

/// Whether logs are JSON lines, so that a fatal error is one too (see `exit::fail`).
pub static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Log lines lost because stderr could not take them (full disk, closed pipe).
pub static LOST_LOG_LINES: AtomicU64 = AtomicU64::new(0);

/// stderr that drops (and counts) what it cannot write instead of failing: logging must never
/// be what stops a monitor. SIGPIPE is ignored by Rust programs, so a closed pipe is an error
/// here, not a signal.
pub struct LossyStderr;

impl Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::io::stderr().write_all(buf).is_err() {
            LOST_LOG_LINES.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
