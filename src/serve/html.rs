//! The pages, as maud templates compiled into the binary: the overview and a site page, built
//! from the same values the JSON API returns (`api`), with charts from `svg`.
//!
//! Rules every template keeps, for the Content-Security-Policy and for readers without script:
//! no inline script or style (classes only; the stylesheet and `time.js` are served from the
//! binary), every time a `<time datetime>` in UTC that `time.js` may turn into local time, and
//! no URL of a site beyond [`api::public_url`].

use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::api::{
    self, BucketJson, ChangeJson, IncidentJson, ResultJson, SiteJson, SiteSummary, SitesJson,
};
use super::svg::{self, Band, DayBar, PhaseRow, Series};

/// Sites per overview page. A site's card with its 90 bars and their tooltips is ~10 kB, so a
/// page stays well under 300 kB whatever the fleet; problems sort first, so page 1 shows them.
pub const PAGE_SIZE: usize = 20;

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                link rel="stylesheet" href="/static/sitewatch.css";
                script src="/static/time.js" defer {}
            }
            body {
                header { a.brand href="/" { "sitewatch" } span.sub { "status" } }
                main { (body) }
                footer {
                    "Times are shown in your time zone (UTC without JavaScript); hover for UTC. "
                    a href="/api/v1/sites" { "JSON API" }
                }
            }
        }
    }
}

/// A time in UTC: `<time datetime>` with the UTC text, which `time.js` replaces by local time.
pub fn time(rfc3339: &str) -> Markup {
    let shown = DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| {
            t.with_timezone(&Utc)
                .format("%Y-%m-%d %H:%M UTC")
                .to_string()
        })
        .unwrap_or_else(|_| rfc3339.to_owned());
    html! { time datetime=(rfc3339) title=(shown) { (shown) } }
}

fn state_class(state: Option<&str>, maintenance: bool) -> &'static str {
    if maintenance {
        return "st-maint";
    }
    match state {
        Some("up") => "st-up",
        Some("degraded") => "st-degraded",
        Some("down") => "st-down",
        _ => "st-none",
    }
}

/// The state as shown: `up`, `down · maintenance` with the window's name as written.
fn state_label(s: &SiteSummary) -> Markup {
    html! {
        @match s.state.as_deref() {
            Some(state) => { (state) }
            None => { "no data" }
        }
        @if let Some(name) = &s.maintenance {
            " · maintenance " span.win { (name) }
        }
    }
}

use crate::duration::human as duration;

fn uptime_cell(pct: Option<f64>) -> Markup {
    html! { span class=(Band::of(pct).class()) { (svg::pct(pct)) @if pct.is_some() { " %" } } }
}

fn banner(json: &SitesJson) -> Markup {
    let down: Vec<&str> = json
        .sites
        .iter()
        .filter(|s| s.state.as_deref() == Some("down") && s.maintenance.is_none())
        .map(|s| s.site.as_str())
        .collect();
    let maint: Vec<&SiteSummary> = json
        .sites
        .iter()
        .filter(|s| s.maintenance.is_some())
        .collect();
    html! {
        @if !down.is_empty() {
            p.banner.banner-down role="alert" {
                (down.len()) @if down.len() == 1 { " site is down: " } @else { " sites are down: " }
                @for (i, name) in down.iter().take(10).enumerate() {
                    @if i > 0 { ", " }
                    a href=(site_href(name)) { (name) }
                }
                @if down.len() > 10 { ", …" }
            }
        }
        @if !maint.is_empty() {
            p.banner.banner-maint {
                (maint.len()) @if maint.len() == 1 { " site is in maintenance: " } @else { " sites are in maintenance: " }
                @for (i, s) in maint.iter().take(10).enumerate() {
                    @if i > 0 { ", " }
                    a href=(site_href(&s.site)) { (s.site) }
                    " (" (s.maintenance.as_deref().unwrap_or_default()) ")"
                }
                @if maint.len() > 10 { ", …" }
            }
        }
        @if down.is_empty() && maint.is_empty() {
            p.banner.banner-ok { "All sites are operational." }
        }
    }
}

/// The link to a site page: the name percent-encoded as one path segment.
pub fn site_href(name: &str) -> String {
    format!("/site/{}", encode_segment(name))
}

/// Percent-encodes everything but unreserved characters, so any site name is one segment.
pub fn encode_segment(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn slo_cell(s: &SiteSummary) -> Markup {
    html! {
        @match &s.slo {
            None => { span.muted { "no SLO" } }
            Some(slo) => {
                span class=(if slo.breached { "b-bad" } else { "" }) {
                    "SLO " (slo.target_pct) " % / " (slo.window) ": "
                    (format!("{:.1}", slo.budget_left_pct)) " % budget left"
                    @if let Some(latency) = &slo.latency {
                        ", " (latency.objective) " " (svg::ms(latency.observed_ms))
                        (if latency.breached { ", over " } else { " within " })
                        (svg::ms(Some(latency.max_ms)))
                    }
                    @if slo.breached { " (breached)" }
                }
            }
        }
    }
}

/// The order of the overview: down, degraded, in maintenance, SLO breached, no data, then the
/// rest, each group in configuration order.
pub fn rank(s: &SiteSummary) -> u8 {
    match (s.state.as_deref(), s.maintenance.is_some()) {
        (Some("down"), false) => 0,
        (Some("degraded"), false) => 1,
        (_, true) => 2,
        _ if s.slo.as_ref().is_some_and(|slo| slo.breached) => 3,
        (None, _) => 4,
        _ => 5,
    }
}

/// The overview: a banner, then one card per site of `page` (1-based) with its state, uptime
/// per window, SLO, and the 90-day bar row.
pub fn overview(
    overview: &api::Overview,
    shown: &[&SiteSummary],
    page: usize,
    pages: usize,
) -> Markup {
    let json = &overview.json;
    let body = html! {
        h1 { "Status" }
        (banner(json))
        p.summary {
            (json.sites.len()) " sites · " (json.down) " down · " (json.degraded) " degraded · "
            (json.in_maintenance) " in maintenance · as of " (time(&json.generated_at))
        }
        @if pages > 1 { (pager(page, pages)) }
        div.sites {
            @for s in shown {
                section class={ "site " (state_class(s.state.as_deref(), s.maintenance.is_some())) } {
                    div.head {
                        a.name href=(site_href(&s.site)) { (s.site) }
                        span.state { (state_label(s)) }
                        @if let Some(since) = &s.since { span.since { "since " (time(since)) } }
                    }
                    div.url { (s.url) }
                    dl.figs {
                        @for (window, pct) in api::Window::ALL.iter().map(|w| (w.name(), s.uptime_pct.get(w.name()).copied().flatten())) {
                            div { dt { (window) } dd { (uptime_cell(pct)) } }
                        }
                    }
                    div.slo { (slo_cell(s)) }
                    (PreEscaped(svg::day_bars(&format!("{}: the last 90 days", s.site), &overview.bars(&s.site))))
                    div.axis { span { "90 days ago" } span { "today" } }
                }
            }
        }
        @if pages > 1 { (pager(page, pages)) }
    };
    layout("Status — sitewatch", body)
}

fn pager(page: usize, pages: usize) -> Markup {
    html! {
        nav.pager {
            @if page > 1 { a href={ "/?page=" (page - 1) } { "← previous" } }
            span { "page " (page) " of " (pages) }
            @if page < pages { a href={ "/?page=" (page + 1) } { "next →" } }
        }
    }
}

fn bars_of(daily: &[BucketJson]) -> Vec<DayBar> {
    daily
        .iter()
        .map(|b| DayBar {
            day: b.start.get(..10).unwrap_or(&b.start).to_owned(),
            checks: b.figures.checks,
            uptime_pct: b.figures.uptime_pct,
            incidents: b.incidents,
            maintenance: b.figures.maintenance,
        })
        .collect()
}

fn latency_series(buckets: &[BucketJson]) -> Vec<Series> {
    vec![
        Series {
            name: "p50",
            values: buckets.iter().map(|b| b.figures.p50_ms).collect(),
        },
        Series {
            name: "p95",
            values: buckets.iter().map(|b| b.figures.p95_ms).collect(),
        },
        Series {
            name: "p99",
            values: buckets.iter().map(|b| b.figures.p99_ms).collect(),
        },
    ]
}

/// Everything a site page shows; each part is also a JSON endpoint.
pub struct SitePage<'a> {
    pub site: &'a SiteJson,
    pub daily: &'a [BucketJson],
    pub hourly: &'a [BucketJson],
    pub results: &'a [ResultJson],
}

/// One site: state, figures per window, SLO, 90 bars, latency by phase and over time,
/// certificate, state changes, incidents and the latest results. Long on purpose (over 80
/// lines): one template section per part of the page, in page order.
pub fn site(page: &SitePage<'_>) -> Markup {
    let j = page.site;
    let s = &j.summary;
    let phase_rows: Vec<PhaseRow> = j
        .windows
        .iter()
        .map(|w| PhaseRow {
            label: w.window.to_owned(),
            means_ms: w.figures.mean_ms.phases(),
        })
        .collect();
    let label = |b: Option<&BucketJson>, n: usize| {
        b.map(|b| b.start.get(..n).unwrap_or(&b.start).replace('T', " "))
            .unwrap_or_default()
    };
    let body = html! {
        p.crumbs { a href="/" { "← all sites" } }
        h1 { (s.site) }
        p class={ "statebox " (state_class(s.state.as_deref(), s.maintenance.is_some())) } {
            span.state { (state_label(s)) }
            @if let Some(since) = &s.since { " since " (time(since)) }
            @if let Some(last) = &s.last_check_at { span.muted { " · last check " (time(last)) } }
        }
        p.url { (s.url) }
        @if let (Some(kind), Some("down")) = (&s.last_failure_kind, s.state.as_deref()) {
            p.cause { "Failing: " (kind) }
        }

        h2 { "Availability and latency" }
        div.tablewrap {
            table.figures {
                thead { tr { th { "window" } th { "uptime" } th { "checks" } th { "down" } th { "downtime" } th { "p50" } th { "p95" } th { "p99" } } }
                tbody {
                    @for w in &j.windows {
                        tr {
                            th scope="row" { (w.window) }
                            td { (uptime_cell(w.figures.uptime_pct)) }
                            td { (svg::thousands(w.figures.checks)) }
                            td { (svg::thousands(w.figures.down)) }
                            td { (duration(w.downtime_s)) }
                            td { (svg::ms(w.figures.p50_ms)) }
                            td { (svg::ms(w.figures.p95_ms)) }
                            td { (svg::ms(w.figures.p99_ms)) }
                        }
                    }
                }
            }
        }
        p.slo { (slo_cell(s))
            @if let Some(slo) = &s.slo {
                @if slo.budget_left_min >= 0.0 {
                    " · " (format!("{:.1}", slo.budget_left_min)) " min of downtime left"
                } @else {
                    " · overspent by " (format!("{:.1}", -slo.budget_left_min)) " min"
                }
                " · uptime " (svg::pct(slo.uptime_pct)) " % since " (time(&slo.from))
            }
        }

        h2 { "The last 90 days" }
        (PreEscaped(svg::day_bars(&format!("{}: the last 90 days", s.site), &bars_of(page.daily))))
        div.axis { span { "90 days ago" } span { "today" } }

        h2 { "Time per phase (means)" }
        (PreEscaped(svg::phase_stack(&phase_rows)))
        p.legend {
            @for (i, phase) in svg::PHASES.iter().enumerate() { span class={ "key ph" (i) } { (phase) } " " }
        }
        p.note {
            "Only total time and time to first byte are kept as histograms, so percentiles exist for "
            "the total only; DNS, connect, TLS, TTFB and transfer are means (sum ÷ count of the "
            "rollups) over the checks where the phase happened."
        }

        h2 { "Latency, last 48 hours (hourly)" }
        (PreEscaped(svg::line_chart("p50, p95 and p99 of total time per hour", (&label(page.hourly.first(), 16), &label(page.hourly.last(), 16)), &latency_series(page.hourly))))
        p.legend { span.key.ln-p50 { "p50" } " " span.key.ln-p95 { "p95" } " " span.key.ln-p99 { "p99" } }
        h2 { "Latency, last 90 days (daily)" }
        (PreEscaped(svg::line_chart("p50, p95 and p99 of total time per day", (&label(page.daily.first(), 10), &label(page.daily.last(), 10)), &latency_series(page.daily))))

        h2 { "Certificate" }
        @match (&j.cert_not_after, j.cert_days_left) {
            (Some(at), Some(days)) => {
                p class=(if days < 14.0 { "b-bad" } else { "" }) {
                    "The latest check saw a certificate valid until " (time(at)) " ("
                    (format!("{days:.0}")) " days left)."
                }
            }
            _ => { p.muted { "No certificate in the latest result (plain http, or no check yet)." } }
        }

        h2 { "State changes" }
        (changes(&j.state_changes, &j.generated_at))
        h2 { "Incidents" }
        (incidents(&j.incidents, false))
        h2 { "Latest results" }
        (results(page.results))
    };
    layout(&format!("{} — sitewatch", s.site), body)
}

fn changes(list: &[ChangeJson], now: &str) -> Markup {
    let secs = |a: &str, b: &str| match (
        DateTime::parse_from_rfc3339(a),
        DateTime::parse_from_rfc3339(b),
    ) {
        (Ok(a), Ok(b)) => (b - a).num_seconds() as f64,
        _ => 0.0,
    };
    html! {
        @if list.is_empty() { p.muted { "None recorded." } } @else {
            div.tablewrap { table {
                thead { tr { th { "at" } th { "change" } th { "lasted" } th { "cause" } } }
                tbody {
                    @for (i, c) in list.iter().enumerate() {
                        @let until = if i == 0 { now } else { list[i - 1].at.as_str() };
                        tr {
                            td { (time(&c.at)) }
                            td { (c.from.as_deref().unwrap_or("first result")) " → " span class=(state_class(Some(&c.to), false)) { (c.to) } }
                            td { (duration(secs(&c.at, until))) @if i == 0 { " (ongoing)" } }
                            td { (c.failure_kind.as_deref().unwrap_or("")) @if let Some(m) = &c.failure_message { ": " (m) } }
                        }
                    }
                }
            } }
        }
    }
}

fn incidents(list: &[IncidentJson], with_site: bool) -> Markup {
    html! {
        @if list.is_empty() { p.muted { "None recorded." } } @else {
            div.tablewrap { table {
                thead { tr { @if with_site { th { "site" } } th { "started" } th { "resolved" } th { "duration" } th { "severity" } th { "cause" } } }
                tbody {
                    @for i in list {
                        tr {
                            @if with_site { td { a href=(site_href(&i.site)) { (i.site) } } }
                            td { (time(&i.started_at)) }
                            td { @match &i.resolved_at { Some(r) => { (time(r)) } None => { span.b-bad { "open" } } } }
                            td { (duration(i.duration_s)) }
                            td { (i.severity) }
                            td { (i.cause_kind.as_deref().unwrap_or("")) @if let Some(m) = &i.cause_message { ": " (m) } " (" (i.failed_checks) " failed checks)" }
                        }
                    }
                }
            } }
        }
    }
}

fn results(list: &[ResultJson]) -> Markup {
    html! {
        @if list.is_empty() { p.muted { "No stored results." } } @else {
            div.tablewrap { table.results {
                thead { tr { th { "scheduled" } th { "outcome" } th { "status" } th { "total" } th { "failure" } } }
                tbody {
                    @for r in list {
                        tr {
                            td { (time(&r.scheduled_at)) }
                            td { span class=(state_class(Some(&r.outcome), r.maintenance.is_some())) { (r.outcome) } @if let Some(m) = &r.maintenance { " (maintenance " (m) ")" } }
                            td { @if let Some(s) = r.status { (s) } @else { "-" } }
                            td { (svg::ms(Some(r.total_ms))) }
                            td {
                                @if let Some(kind) = &r.failure_kind {
                                    (kind) @if let Some(m) = &r.failure_message { ": " (m) }
                                }
                                @if !r.failed_assertions.is_empty() {
                                    ul.assertions {
                                        @for a in &r.failed_assertions {
                                            li { code { (a.name) } " expected " (a.expected) ", got " (a.actual)
                                                @if let Some(reason) = &a.reason { " — " (reason) } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            } }
        }
    }
}

/// A page for a 4xx/5xx answer.
pub fn error(status: u16, message: &str) -> Markup {
    layout(
        &format!("{status} — sitewatch"),
        html! { h1 { (status) } p { (message) } p { a href="/" { "← all sites" } } },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0s"),
            (-5.0, "0s"),
            (59.4, "59s"),
            (61.0, "1m 1s"),
            (3_600.0, "1h 0m"),
            (7_380.0, "2h 3m"),
            (90_000.0, "1d 1h"),
        ];
        for &(secs, want) in cases {
            assert_eq!(duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn site_links_are_one_segment() {
        let cases = [
            ("shop", "/site/shop"),
            ("a b/c?d", "/site/a%20b%2Fc%3Fd"),
            ("ü", "/site/%C3%BC"),
            ("x.y-z_~", "/site/x.y-z_~"),
        ];
        for (name, want) in cases {
            assert_eq!(site_href(name), want);
        }
    }

    #[test]
    fn times_are_utc_in_a_time_element() {
        let got = time("2024-03-01T10:05:00Z").into_string();
        assert_eq!(
            got,
            "<time datetime=\"2024-03-01T10:05:00Z\" title=\"2024-03-01 10:05 UTC\">2024-03-01 10:05 UTC</time>"
        );
    }

    #[test]
    fn problems_rank_first() {
        let summary = |state: Option<&str>, maintenance: bool| SiteSummary {
            site: "s".into(),
            url: "https://s/".into(),
            state: state.map(str::to_owned),
            since: None,
            last_check_at: None,
            maintenance: maintenance.then(|| "w".to_owned()),
            last_failure_kind: None,
            uptime_pct: Default::default(),
            slo: None,
        };
        let cases = [
            (summary(Some("down"), false), 0),
            (summary(Some("degraded"), false), 1),
            (summary(Some("down"), true), 2),
            (summary(None, false), 4),
            (summary(Some("up"), false), 5),
        ];
        for (s, want) in cases {
            assert_eq!(rank(&s), want, "{:?}", s.state);
        }
    }
}
