//! Delivery: sends what the outbox holds, at least once, one task per notifier so a receiver
//! that fails or hangs never holds up the others.
//!
//! ```text
//! loop per notifier: lease due rows (oldest first, SKIP LOCKED) → POST each
//!     2xx ─► delivered_at = now()
//!     else ─► last_error, next attempt after a backoff (5 s doubling to 10 min); the row stays
//! ```
//!
//! Every request carries the notification's dedup key (`Idempotency-Key` header, and
//! `dedup_key` in the default body): a crash between the POST and marking it delivered repeats
//! the request once the lease runs out, with the same key. Alertmanager receives the v2 API's
//! alert objects (labels identify the incident; `endsAt` on resolve), and every open incident
//! is re-sent every [`ALERTMANAGER_RESEND`], as Alertmanager clients must.

use std::io::Write as _;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::format::Formatters;
use super::notice::Notice;
use super::outbox::{self, Pending};
use crate::config::{Notifier, NotifierKind};
use crate::metrics as names;
use crate::settings::DatabaseSettings;
use crate::store;

/// How often each notifier's task looks for due notifications.
const POLL: Duration = Duration::from_millis(200);
/// Notifications leased per round.
const LEASE_BATCH: i64 = 20;
/// Deadline of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay after a failed request; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(600);
/// How often open incidents are re-sent to Alertmanager (its default `resolve_timeout` is 5 min).
pub const ALERTMANAGER_RESEND: Duration = Duration::from_secs(60);
/// Longest error text kept in `notifications.last_error`.
const MAX_ERROR_LEN: usize = 500;

/// Where notifications go instead of the network with `--dry-run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Send,
    /// Print each request on stdout and mark it delivered.
    Print,
}

/// Sends `notifier`'s notifications until `shutdown`.
pub async fn run(
    db: DatabaseSettings,
    notifier: Notifier,
    formatters: Option<Formatters>,
    mode: Mode,
    shutdown: CancellationToken,
) {
    let http = match reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("sitewatch/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(notifier = %notifier.name, %error, "cannot build the HTTP client");
            return;
        }
    };
    names::zero_notifier(&notifier.name);
    let sender = Sender {
        notifier,
        formatters,
        http,
        mode,
    };
    let mut client = None;
    let mut resent_at = tokio::time::Instant::now() - ALERTMANAGER_RESEND;
    loop {
        if client
            .as_ref()
            .is_none_or(tokio_postgres::Client::is_closed)
        {
            client = store::connect(&db)
                .await
                .inspect_err(|e| tracing::warn!(error = %store::ErrorChain(e), "alert delivery: cannot reach PostgreSQL"))
                .ok();
        }
        if let Some(db) = &client {
            if sender.is_alertmanager() && resent_at.elapsed() >= ALERTMANAGER_RESEND {
                resent_at = tokio::time::Instant::now();
                sender.resend_open(db).await;
            }
            if let Err(error) = sender.round(db).await {
                tracing::warn!(notifier = %sender.notifier.name, %error, "alert delivery: PostgreSQL error");
                client = None;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

struct Sender {
    notifier: Notifier,
    formatters: Option<Formatters>,
    http: reqwest::Client,
    mode: Mode,
}

impl Sender {
    fn is_alertmanager(&self) -> bool {
        matches!(self.notifier.kind, NotifierKind::Alertmanager { .. })
    }

    /// Sends what is due, in order; a failure leaves the rest of the round for later.
    async fn round(&self, db: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
        let name = &self.notifier.name;
        for pending in outbox::lease(db, name, LEASE_BATCH).await? {
            match self.send(&pending).await {
                Ok(()) => {
                    outbox::delivered(db, name, &pending.dedup_key).await?;
                    metrics::counter!(names::NOTIFICATIONS_SENT, "notifier" => name.clone())
                        .increment(1);
                    tracing::info!(notifier = %name, key = %pending.dedup_key, kind = %pending.kind, "notification delivered");
                }
                Err(error) => {
                    let retry_in = backoff(pending.attempts);
                    let error: String = error.chars().take(MAX_ERROR_LEN).collect();
                    outbox::failed(db, name, &pending.dedup_key, &error, retry_in).await?;
                    metrics::counter!(names::NOTIFICATIONS_FAILED, "notifier" => name.clone())
                        .increment(1);
                    tracing::warn!(notifier = %name, key = %pending.dedup_key, attempt = pending.attempts,
                        retry_in_s = retry_in.as_secs(), %error, "notification not delivered; kept in the outbox");
                }
            }
        }
        Ok(())
    }

    async fn send(&self, pending: &Pending) -> Result<(), String> {
        let notice = &pending.notice;
        let (url, body, headers) = match &self.notifier.kind {
            NotifierKind::Webhook {
                url,
                headers,
                has_format,
            } => {
                let body = match (&self.formatters, has_format) {
                    (Some(formatters), true) => {
                        formatters.format(&self.notifier.name, notice).await?
                    }
                    _ => serde_json::to_string(notice).map_err(|e| e.to_string())?,
                };
                (url.clone(), body, headers.clone())
            }
            NotifierKind::Alertmanager { url } => {
                if notice.incident_id.is_none() {
                    return Ok(()); // flapping notices have no alert to raise in Alertmanager
                }
                let body = json!([alertmanager_alert(notice)]).to_string();
                (alerts_url(url)?, body, Vec::new())
            }
        };
        self.post(url.as_str(), &pending.dedup_key, body, &headers)
            .await
    }

    async fn post(
        &self,
        url: &str,
        dedup_key: &str,
        body: String,
        headers: &[(String, String)],
    ) -> Result<(), String> {
        if self.mode == Mode::Print {
            let _ = writeln!(
                std::io::stdout(),
                "{} POST {url} Idempotency-Key: {dedup_key}\n{body}",
                self.notifier.name
            );
            return Ok(());
        }
        let mut request = self
            .http
            .post(url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", dedup_key)
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| store::ErrorChain(&e).to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            Err(format!("{status}: {}", text.trim()))
        }
    }

    /// Re-sends every open incident to Alertmanager (failures only logged: the next round
    /// re-sends anyway).
    async fn resend_open(&self, db: &tokio_postgres::Client) {
        let NotifierKind::Alertmanager { url } = &self.notifier.kind else {
            return;
        };
        let notices = match outbox::open_incidents(db).await {
            Ok(notices) => notices,
            Err(error) => return tracing::warn!(%error, "cannot read open incidents"),
        };
        if notices.is_empty() {
            return;
        }
        let body = serde_json::Value::Array(notices.iter().map(alertmanager_alert).collect());
        let result = match alerts_url(url) {
            Ok(url) => {
                self.post(url.as_str(), "resend", body.to_string(), &[])
                    .await
            }
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            tracing::warn!(notifier = %self.notifier.name, %error, "cannot re-send open alerts");
        }
    }
}

/// The delay before the attempt after `attempts` failed ones.
fn backoff(attempts: i32) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 16) as u32;
    RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX)
}

fn alerts_url(base: &url::Url) -> Result<url::Url, String> {
    let path = format!("{}/api/v2/alerts", base.path().trim_end_matches('/'));
    let mut url = base.clone();
    url.set_path(&path);
    Ok(url)
}

/// One alert of Alertmanager's v2 API. Labels identify the incident (a site's next incident is
/// another alert); `endsAt` closes it.
fn alertmanager_alert(notice: &Notice) -> serde_json::Value {
    let mut alert = json!({
        "labels": {
            "alertname": "SitewatchIncident",
            "site": notice.site,
            "severity": notice.severity,
            "incident": notice.incident_id,
        },
        "annotations": {
            "summary": notice.message,
            "url": notice.url,
            "failure_kind": notice.failure_kind,
            "dedup_key": notice.dedup_key,
        },
        "startsAt": notice.started_at,
        "generatorURL": notice.url,
    });
    if let Some(resolved_at) = &notice.resolved_at {
        alert["endsAt"] = json!(resolved_at);
    }
    alert
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let delays: Vec<u64> = (0..12).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(&delays[..5], &[5, 5, 10, 20, 40]);
        assert_eq!(*delays.last().unwrap(), 600);
    }

    #[test]
    fn alertmanager_urls_and_alerts() {
        let base = url::Url::parse("http://127.0.0.1:9093").unwrap();
        assert_eq!(
            alerts_url(&base).unwrap().as_str(),
            "http://127.0.0.1:9093/api/v2/alerts"
        );
        let prefixed = url::Url::parse("http://am.example/prefix/").unwrap();
        assert_eq!(
            alerts_url(&prefixed).unwrap().as_str(),
            "http://am.example/prefix/api/v2/alerts"
        );
    }
}
