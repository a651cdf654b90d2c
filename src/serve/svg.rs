//! Charts and badges drawn as SVG text on the server (pure): the status page inlines them, the
//! badge endpoints serve them as they are. No script, no style attribute (the page's CSP allows
//! neither): colours are classes styled by `/static/sitewatch.css`, or presentation attributes
//! in badges, which are served alone.
//!
//! ```text
//!  api::DayFigures ──► day_bars ──► 90 <rect>s, one <title> tooltip per day
//!  api::Latency    ──► phase_stack ──► one stacked bar per window (DNS … transfer means)
//!  hourly/daily    ──► line_chart ──► p50/p95/p99 polylines over time
//!  label, value    ──► badge ──► a flat two-part badge
//! ```

use std::fmt::Write;

/// Uptime bands of the day bars (and of uptime badges), best first: a day at or above
/// `min_pct` gets the band's class. A day without checks has no band ([`Band::None`]).
pub const BANDS: [(f64, Band); 4] = [
    (99.9, Band::Good),
    (99.0, Band::Minor),
    (95.0, Band::Major),
    (0.0, Band::Bad),
];

/// The colour class of a day or a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Band {
    Good,
    Minor,
    Major,
    Bad,
    /// No checks: nothing to judge.
    None,
}

impl Band {
    /// The band of an uptime percentage (`None`: no checks).
    pub fn of(uptime_pct: Option<f64>) -> Band {
        let Some(pct) = uptime_pct.filter(|p| !p.is_nan()) else {
            return Band::None;
        };
        BANDS
            .iter()
            .find(|(min, _)| pct >= *min)
            .map_or(Band::Bad, |(_, band)| *band)
    }

    /// CSS class on the page.
    pub fn class(self) -> &'static str {
        match self {
            Band::Good => "b-good",
            Band::Minor => "b-minor",
            Band::Major => "b-major",
            Band::Bad => "b-bad",
            Band::None => "b-none",
        }
    }

    /// Fill colour in badges (served alone, without the stylesheet).
    pub fn colour(self) -> &'static str {
        match self {
            Band::Good => "#2e7d32",
            Band::Minor => "#7cb342",
            Band::Major => "#f9a825",
            Band::Bad => "#c62828",
            Band::None => "#9e9e9e",
        }
    }
}

/// Escapes text for SVG/XML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// An uptime percentage as the page shows it: three decimals below 100, `100` at 100,
/// `-` without checks. Never rounds up to 100 (99.9996 shows as 99.999).
pub fn pct(uptime_pct: Option<f64>) -> String {
    match uptime_pct {
        None => "-".into(),
        Some(p) if p >= 100.0 => "100".into(),
        Some(p) => format!("{:.3}", (p * 1000.0).floor() / 1000.0),
    }
}

/// A latency in milliseconds: `-` when unknown, one decimal below 100 ms, whole ms below 10 s,
/// seconds above.
pub fn ms(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(v) if v < 100.0 => format!("{v:.1} ms"),
        Some(v) if v < 10_000.0 => format!("{v:.0} ms"),
        Some(v) => format!("{:.1} s", v / 1000.0),
    }
}

// ---------------------------------------------------------------------------------------------
// Day bars

/// One day of the bar row.
#[derive(Debug, Clone, PartialEq)]
pub struct DayBar {
    /// `2024-03-01` (UTC day).
    pub day: String,
    pub checks: i64,
    pub uptime_pct: Option<f64>,
    /// Incidents open at some time of the day.
    pub incidents: i64,
    /// Checks inside maintenance windows.
    pub maintenance: i64,
}

/// Width of one day's slot in the bar row, in SVG units; the bar is one unit narrower.
const BAR_STEP: usize = 6;
const BAR_HEIGHT: usize = 24;

/// One `<rect>` per day, oldest first, each with a `<title>` tooltip: checks, uptime and
/// incidents of the day. Scales to its container's width (CSS), keeps its height.
pub fn day_bars(label: &str, days: &[DayBar]) -> String {
    let width = days.len().max(1) * BAR_STEP;
    let mut out = format!(
        "<svg class=\"bars\" viewBox=\"0 0 {width} {BAR_HEIGHT}\" preserveAspectRatio=\"none\" \
         role=\"img\" aria-label=\"{}\">",
        escape(label)
    );
    for (i, d) in days.iter().enumerate() {
        let band = Band::of(d.uptime_pct);
        let mut title = if d.checks == 0 {
            format!("{}: no checks", d.day)
        } else {
            format!(
                "{}: {} checks, {} % up",
                d.day,
                thousands(d.checks),
                pct(d.uptime_pct)
            )
        };
        match d.incidents {
            0 => {}
            1 => title.push_str(", 1 incident"),
            n => {
                let _ = write!(title, ", {n} incidents");
            }
        }
        if d.maintenance > 0 {
            let _ = write!(title, ", {} in maintenance", thousands(d.maintenance));
        }
        let _ = write!(
            out,
            "<rect x=\"{}\" width=\"{}\" height=\"{BAR_HEIGHT}\" class=\"{}\"><title>{}</title></rect>",
            i * BAR_STEP,
            BAR_STEP - 1,
            band.class(),
            escape(&title)
        );
    }
    out.push_str("</svg>");
    out
}

// ---------------------------------------------------------------------------------------------
// Phase stack

/// The phases of a request in order, as the stacked bars draw them.
pub const PHASES: [&str; 5] = ["DNS", "connect", "TLS", "TTFB", "transfer"];

/// One stacked bar: a label (the window) and the mean of each phase of [`PHASES`].
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseRow {
    pub label: String,
    pub means_ms: [Option<f64>; 5],
}

const STACK_WIDTH: f64 = 480.0;
const STACK_LABEL: f64 = 48.0;
const STACK_ROW: f64 = 26.0;
const STACK_BAR: f64 = 18.0;

/// Horizontal bars, one per row, each split into its phase means (the same scale for every
/// row); a phase that never happened (no TLS on http) takes no room. Each segment has a
/// tooltip with its mean.
pub fn phase_stack(rows: &[PhaseRow]) -> String {
    let total = |r: &PhaseRow| r.means_ms.iter().flatten().sum::<f64>();
    let max = rows.iter().map(total).fold(0.0, f64::max);
    let height = STACK_ROW * rows.len().max(1) as f64;
    let mut out = format!(
        "<svg class=\"stack\" viewBox=\"0 0 {STACK_WIDTH} {height}\" role=\"img\" \
         aria-label=\"mean time per phase\">"
    );
    let room = STACK_WIDTH - STACK_LABEL - 70.0;
    for (i, row) in rows.iter().enumerate() {
        let y = i as f64 * STACK_ROW;
        let _ = write!(
            out,
            "<text x=\"0\" y=\"{:.1}\" class=\"lbl\">{}</text>",
            y + STACK_BAR - 5.0,
            escape(&row.label)
        );
        let mut x = STACK_LABEL;
        for (p, mean) in row.means_ms.iter().enumerate() {
            let Some(mean) = mean.filter(|m| *m > 0.0 && max > 0.0) else {
                continue;
            };
            let w = mean / max * room;
            let _ = write!(
                out,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{STACK_BAR}\" \
                 class=\"ph{p}\"><title>{} {}: {} mean</title></rect>",
                escape(&row.label),
                PHASES[p],
                ms(Some(mean))
            );
            x += w;
        }
        let sum = total(row);
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"lbl\">{}</text>",
            x + 4.0,
            y + STACK_BAR - 5.0,
            if sum > 0.0 { ms(Some(sum)) } else { "-".into() }
        );
    }
    out.push_str("</svg>");
    out
}

// ---------------------------------------------------------------------------------------------
// Line chart

/// One line: a name (legend, class) and a value per x position (`None`: a gap).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: &'static str,
    pub values: Vec<Option<f64>>,
}

const CHART_WIDTH: f64 = 720.0;
const CHART_HEIGHT: f64 = 180.0;
/// Room for the y labels: `500 ms` at 20 px, the size phones get (`sitewatch.css`).
const CHART_LEFT: f64 = 84.0;
const CHART_BOTTOM: f64 = 20.0;
const CHART_TOP: f64 = 8.0;

/// The y-axis top: the smallest of 1, 2, 2.5, 5 × 10^k at or above `max` (0 for an empty chart
/// is drawn as 1).
pub fn nice_ceiling(max: f64) -> f64 {
    if max.is_nan() || max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|top| *top >= max * (1.0 - 1e-12))
        .unwrap_or(10.0 * magnitude)
}

/// Latency lines over time: one polyline per series (broken where a value is missing), a y axis
/// in ms with four grid lines, the first and last x labels under the axis. Each point of the
/// first series carries no marker; the tooltip of the chart is its label.
pub fn line_chart(label: &str, x_labels: (&str, &str), series: &[Series]) -> String {
    let n = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(0.0, |m: f64, v| m.max(*v));
    let top = nice_ceiling(max);
    let plot_w = CHART_WIDTH - CHART_LEFT - 4.0;
    let plot_h = CHART_HEIGHT - CHART_TOP - CHART_BOTTOM;
    let x_of = |i: usize| {
        if n <= 1 {
            CHART_LEFT + plot_w / 2.0
        } else {
            CHART_LEFT + plot_w * i as f64 / (n - 1) as f64
        }
    };
    let y_of = |v: f64| CHART_TOP + plot_h * (1.0 - (v / top).clamp(0.0, 1.0));
    let mut out = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {CHART_WIDTH} {CHART_HEIGHT}\" role=\"img\" \
         aria-label=\"{}\"><title>{}</title>",
        escape(label),
        escape(label)
    );
    for k in 0..=4 {
        let v = top * k as f64 / 4.0;
        let y = y_of(v);
        let _ = write!(
            out,
            "<line x1=\"{CHART_LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" class=\"grid\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" class=\"axis\" text-anchor=\"end\">{}</text>",
            CHART_WIDTH - 4.0,
            CHART_LEFT - 4.0,
            y + 4.0,
            ms(Some(v))
        );
    }
    let baseline = CHART_HEIGHT - 4.0;
    let _ = write!(
        out,
        "<text x=\"{CHART_LEFT}\" y=\"{baseline}\" class=\"axis\">{}</text>\
         <text x=\"{:.1}\" y=\"{baseline}\" class=\"axis\" text-anchor=\"end\">{}</text>",
        escape(x_labels.0),
        CHART_WIDTH - 4.0,
        escape(x_labels.1)
    );
    for s in series {
        let mut run: Vec<String> = Vec::new();
        let flush = |run: &mut Vec<String>, out: &mut String| {
            if run.len() == 1 {
                // A lone point between gaps: a dot, or it would not show.
                let (x, y) = run[0].split_once(',').unwrap_or(("0", "0"));
                let _ = write!(
                    out,
                    "<circle cx=\"{x}\" cy=\"{y}\" r=\"2\" class=\"ln-{}\"/>",
                    s.name
                );
            } else if run.len() > 1 {
                let _ = write!(
                    out,
                    "<polyline points=\"{}\" class=\"ln ln-{}\"/>",
                    run.join(" "),
                    s.name
                );
            }
            run.clear();
        };
        for (i, v) in s.values.iter().enumerate() {
            match v {
                Some(v) => run.push(format!("{:.1},{:.1}", x_of(i), y_of(*v))),
                None => flush(&mut run, &mut out),
            }
        }
        flush(&mut run, &mut out);
    }
    out.push_str("</svg>");
    out
}

// ---------------------------------------------------------------------------------------------
// Badges

/// Approximate width of a character of 11 px Verdana/DejaVu Sans: badges are sized without
/// fonts at hand, like shields.io does (a wide glyph table would be exact; this errs wide).
fn text_width(text: &str) -> usize {
    text.chars()
        .map(|c| match c {
            'i' | 'l' | 'j' | '.' | ',' | ':' | '|' | '!' | '\'' | ' ' => 4,
            'm' | 'w' | 'M' | 'W' | '%' => 10,
            c if c.is_ascii_uppercase() => 8,
            _ => 7,
        })
        .sum()
}

/// A flat badge: `label` on grey, `value` on `colour`. Self-contained (no stylesheet), with a
/// `<title>` of both for screen readers and tooltips.
pub fn badge(label: &str, value: &str, colour: &str) -> String {
    let lw = text_width(label) + 12;
    let vw = text_width(value) + 12;
    let w = lw + vw;
    let (label, value, colour) = (escape(label), escape(value), escape(colour));
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"20\" role=\"img\" \
         aria-label=\"{label}: {value}\"><title>{label}: {value}</title>\
         <rect width=\"{lw}\" height=\"20\" fill=\"#555\"/>\
         <rect x=\"{lw}\" width=\"{vw}\" height=\"20\" fill=\"{colour}\"/>\
         <g fill=\"#fff\" text-anchor=\"middle\" font-family=\"Verdana,DejaVu Sans,sans-serif\" \
         font-size=\"11\"><text x=\"{}\" y=\"14\">{label}</text><text x=\"{}\" y=\"14\">{value}\
         </text></g></svg>",
        lw / 2,
        lw + vw / 2
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_of_uptime() {
        let cases: &[(Option<f64>, Band)] = &[
            (None, Band::None),
            (Some(f64::NAN), Band::None),
            (Some(100.0), Band::Good),
            (Some(99.9), Band::Good),
            (Some(99.899), Band::Minor),
            (Some(99.0), Band::Minor),
            (Some(98.99), Band::Major),
            (Some(95.0), Band::Major),
            (Some(94.9), Band::Bad),
            (Some(0.0), Band::Bad),
            (Some(-1.0), Band::Bad),
        ];
        for &(uptime, want) in cases {
            assert_eq!(Band::of(uptime), want, "{uptime:?}");
        }
    }

    #[test]
    fn formats_numbers() {
        let cases: &[(i64, &str)] = &[
            (0, "0"),
            (999, "999"),
            (1_000, "1,000"),
            (1_440, "1,440"),
            (1_234_567, "1,234,567"),
            (-12_345, "-12,345"),
        ];
        for &(n, want) in cases {
            assert_eq!(thousands(n), want);
        }
        let pcts: &[(Option<f64>, &str)] = &[
            (None, "-"),
            (Some(100.0), "100"),
            (Some(99.9996), "99.999"),
            (Some(99.5), "99.500"),
            (Some(0.0), "0.000"),
        ];
        for &(p, want) in pcts {
            assert_eq!(pct(p), want, "{p:?}");
        }
        let mss: &[(Option<f64>, &str)] = &[
            (None, "-"),
            (Some(3.25), "3.2 ms"),
            (Some(99.94), "99.9 ms"),
            (Some(250.4), "250 ms"),
            (Some(12_500.0), "12.5 s"),
        ];
        for &(v, want) in mss {
            assert_eq!(ms(v), want, "{v:?}");
        }
    }

    #[test]
    fn escapes_markup() {
        let cases = [
            ("plain", "plain"),
            ("a<b>&\"'", "a&lt;b&gt;&amp;&quot;&#39;"),
            ("</title><script>", "&lt;/title&gt;&lt;script&gt;"),
        ];
        for (text, want) in cases {
            assert_eq!(escape(text), want);
        }
    }

    #[test]
    fn day_bars_have_one_rect_and_tooltip_per_day() {
        let day = |d: &str, checks, uptime, incidents, maintenance| DayBar {
            day: d.into(),
            checks,
            uptime_pct: uptime,
            incidents,
            maintenance,
        };
        // (day, want class, want tooltip)
        let cases = [
            (
                day("2024-03-01", 1440, Some(100.0), 0, 0),
                "b-good",
                "2024-03-01: 1,440 checks, 100 % up",
            ),
            (
                day("2024-03-02", 1440, Some(99.5), 1, 0),
                "b-minor",
                "2024-03-02: 1,440 checks, 99.500 % up, 1 incident",
            ),
            (
                day("2024-03-03", 100, Some(90.0), 3, 20),
                "b-bad",
                "2024-03-03: 100 checks, 90.000 % up, 3 incidents, 20 in maintenance",
            ),
            (
                day("2024-03-04", 0, None, 0, 0),
                "b-none",
                "2024-03-04: no checks",
            ),
        ];
        let days: Vec<DayBar> = cases.iter().map(|(d, _, _)| d.clone()).collect();
        let svg = day_bars("shop <90 days>", &days);
        assert_eq!(svg.matches("<rect ").count(), days.len());
        assert_eq!(svg.matches("<title>").count(), days.len());
        assert!(svg.contains("aria-label=\"shop &lt;90 days&gt;\""), "{svg}");
        for (i, (_, class, tooltip)) in cases.iter().enumerate() {
            let rect = format!(
                "<rect x=\"{}\" width=\"5\" height=\"24\" class=\"{class}\"><title>{tooltip}</title></rect>",
                i * 6
            );
            assert!(svg.contains(&rect), "missing {rect} in {svg}");
        }
    }

    #[test]
    fn phase_stack_scales_every_row_alike() {
        let rows = [
            PhaseRow {
                label: "24h".into(),
                means_ms: [Some(10.0), Some(20.0), Some(30.0), Some(40.0), Some(0.0)],
            },
            PhaseRow {
                label: "7d".into(),
                means_ms: [Some(5.0), Some(10.0), None, Some(35.0), None],
            },
            PhaseRow {
                label: "90d".into(),
                means_ms: [None; 5],
            },
        ];
        let svg = phase_stack(&rows);
        // Zero and missing phases draw nothing: 4 + 3 + 0 segments.
        assert_eq!(svg.matches("<rect ").count(), 7);
        // The longest row fills the room: 100 ms over 362 units; 10 ms is 36.2.
        assert!(svg.contains("x=\"48.0\" y=\"0.0\" width=\"36.2\""), "{svg}");
        assert!(
            svg.contains("<title>7d TTFB: 35.0 ms mean</title>"),
            "{svg}"
        );
        assert!(svg.contains(">100 ms</text>"), "{svg}");
        assert!(svg.contains(">50.0 ms</text>"), "{svg}");
        assert!(svg.contains(">-</text>"), "{svg}");
    }

    #[test]
    fn nice_ceilings() {
        let cases: &[(f64, f64)] = &[
            (0.0, 1.0),
            (f64::NAN, 1.0),
            (0.7, 1.0),
            (1.0, 1.0),
            (1.2, 2.0),
            (2.2, 2.5),
            (3.0, 5.0),
            (7.0, 10.0),
            (120.0, 200.0),
            (480.0, 500.0),
            (1000.0, 1000.0),
        ];
        for &(max, want) in cases {
            assert_eq!(nice_ceiling(max), want, "{max}");
        }
    }

    #[test]
    fn line_chart_breaks_at_gaps() {
        let series = [
            Series {
                name: "p50",
                values: vec![Some(10.0), Some(20.0), None, Some(40.0), None, Some(50.0)],
            },
            Series {
                name: "p99",
                values: vec![None, None, None, None, None, None],
            },
        ];
        let svg = line_chart("latency", ("a", "b"), &series);
        // Two points then a gap: one polyline; a lone point: a circle each.
        assert_eq!(svg.matches("<polyline").count(), 1, "{svg}");
        assert_eq!(svg.matches("<circle").count(), 2, "{svg}");
        // Top of the axis: 50 ms → 50 (nice), x from 84 to 716 in 5 steps.
        assert!(svg.contains("points=\"84.0,129.6 210.4,99.2\""), "{svg}");
        assert!(svg.contains(">50.0 ms</text>"), "{svg}");
        assert_eq!(svg.matches("class=\"grid\"").count(), 5);
    }

    #[test]
    fn badges_escape_and_size() {
        let svg = badge("uptime 30d", "99.950 %", Band::Good.colour());
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.contains("<title>uptime 30d: 99.950 %</title>"));
        assert!(svg.contains("fill=\"#2e7d32\""));
        let svg = badge("a<b", "\"x\"", "#fff");
        assert!(svg.contains("a&lt;b"), "{svg}");
        assert!(!svg.contains("a<b"), "{svg}");
        // Longer text, wider badge.
        let width = |svg: &str| {
            svg.split("width=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        };
        assert!(
            width(&badge("status", "up", "#000")) < width(&badge("status", "maintenance", "#000"))
        );
    }
}
