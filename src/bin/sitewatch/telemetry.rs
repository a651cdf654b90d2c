//! Logs (tracing to stderr, text or JSON) and the Prometheus endpoint.

use std::net::SocketAddr;

use crate::cli::LogFormat;

/// Histogram buckets (seconds) for probe durations, schedule lag and batch latency.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, thiserror::Error)]
#[error("cannot serve metrics on {addr}")]
pub struct MetricsError {
    addr: SocketAddr,
    #[source]
    source: metrics_exporter_prometheus::BuildError,
}

/// Serves `/metrics` on `addr` (nothing when `None`) with every metric described up front.
/// Needs a running Tokio runtime.
pub fn serve_metrics(addr: Option<SocketAddr>) -> Result<(), MetricsError> {
    let Some(addr) = addr else { return Ok(()) };
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(SECONDS_BUCKETS)
        .and_then(|b| b.install())
        .map_err(|source| MetricsError { addr, source })?;
    sitewatch::metrics::describe();
    tracing::info!(%addr, "serving Prometheus metrics");
    Ok(())
}

pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
