//! `GET /ui`: a read-only status page rendered on the server (no script, no build step):
//! every connector's state, a chart of its forwarding rate over the last minutes, its
//! partitions with lag, WAL backlog and dead letters, and the errors of failed ones. The
//! page reloads itself every 5 seconds. The figures are those of the JSON API.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::connector::ConnectorHandle;
use crate::format::ErrorKind;

/// Text safe inside HTML elements and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
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

fn position(v: i64) -> String {
    if v < 0 {
        "-".to_owned()
    } else {
        v.to_string()
    }
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:24px;color:#222}\
h1{font-size:20px}h2{font-size:16px;margin-top:28px}\
table{border-collapse:collapse;margin-top:8px}td,th{padding:3px 10px;text-align:right;border-bottom:1px solid #ddd}\
td:first-child,th:first-child{text-align:left}.state{font-weight:600}\
.RUNNING{color:#1a7f37}.PAUSED,.STOPPED,.STARTING,.UNASSIGNED{color:#9a6700}.FAILED{color:#cf222e}\
.error{color:#cf222e;text-align:left;white-space:pre-wrap}svg{background:#f6f8fa;margin-top:8px}\
.muted{color:#666}";

/// The chart of forwarding rates: a polyline scaled to the highest rate, with the axis
/// labels a person needs (the peak and the time span).
fn chart(points: &[(f64, f64)]) -> String {
    let (w, h) = (600.0, 120.0);
    if points.len() < 2 {
        return format!(
            "<svg class=\"chart\" width=\"{w}\" height=\"{h}\"><text x=\"10\" y=\"60\" fill=\"#666\">collecting: the chart fills in over the next seconds</text></svg>"
        );
    }
    let max = points.iter().map(|p| p.1).fold(0.0_f64, f64::max).max(1.0);
    let (t0, t1) = (points[0].0, points[points.len() - 1].0);
    let span = (t1 - t0).max(1e-3);
    let coords: Vec<String> = points
        .iter()
        .map(|(t, rate)| {
            let x = 40.0 + (t - t0) / span * (w - 50.0);
            let y = h - 20.0 - rate / max * (h - 35.0);
            format!("{x:.1},{y:.1}")
        })
        .collect();
    format!(
        "<svg class=\"chart\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"records forwarded per second\">\
<polyline fill=\"none\" stroke=\"#0969da\" stroke-width=\"2\" points=\"{}\"/>\
<text x=\"4\" y=\"14\" font-size=\"11\" fill=\"#666\">{:.0}/s</text>\
<text x=\"4\" y=\"{}\" font-size=\"11\" fill=\"#666\">0</text>\
<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"#666\" text-anchor=\"end\">last {:.0} s</text></svg>",
        coords.join(" "),
        max,
        h - 20.0,
        w - 10.0,
        h - 4.0,
        span
    )
}

/// The page for these connectors.
pub fn render(connectors: &[Arc<ConnectorHandle>], worker_id: &str) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"5\"><title>kafka-direct status</title><style>{STYLE}</style></head><body>\
<h1>kafka-direct {}</h1><p class=\"muted\">worker {} · {} connector(s) · refreshed every 5 s · JSON: <a href=\"/connectors?expand=status\">/connectors?expand=status</a>, <a href=\"/metrics\">/metrics</a></p>",
        env!("CARGO_PKG_VERSION"),
        escape(worker_id),
        connectors.len()
    );
    if connectors.is_empty() {
        html.push_str("<p>No connector yet: declare one in the config file or create one with <code>POST /connectors</code>.</p>");
    }
    for c in connectors {
        let config = c.config();
        let name = escape(&config.name);
        let state = c.state().name();
        let partitions = c.partitions();
        let sum = |f: &dyn Fn(&crate::metrics::PartitionMetrics) -> u64| -> u64 {
            partitions.iter().map(|p| f(p)).sum()
        };
        let fetched = sum(&|p| p.fetched_records.load(Relaxed));
        let forwarded = sum(&|p| p.forwarded_records.load(Relaxed));
        let dead = sum(&|p| p.dead_lettered_total());
        let lag: i64 = partitions.iter().map(|p| p.source_lag()).sum();
        let backlog: i64 = partitions.iter().map(|p| p.wal_backlog()).sum();
        let _ = write!(
            html,
            "<section class=\"connector\" data-connector=\"{name}\"><h2>{name} <span class=\"state {state}\">{state}</span></h2>\
<p>topics {} → prefix <code>{}</code> · fetched <b class=\"fetched\">{fetched}</b> · forwarded <b class=\"forwarded\">{forwarded}</b> · \
dead-lettered <b class=\"dead-lettered\">{dead}</b> (to <code>{}</code>) · lag <b class=\"lag\">{lag}</b> · WAL backlog <b class=\"backlog\">{backlog}</b></p>",
            escape(&config.topics.join(", ")),
            escape(&config.topic_prefix),
            escape(&config.dead_letter_topic),
        );
        if let Some(error) = c.error().or_else(|| c.waiting()) {
            let _ = write!(html, "<p class=\"error\">{}</p>", escape(&error));
        }
        html.push_str(&chart(&c.throughput()));
        html.push_str(
            "<table><thead><tr><th>partition</th><th>state</th><th>high watermark</th><th>fetched next</th>\
<th>forwarded next</th><th>lag</th><th>WAL backlog</th><th>dead letters</th></tr></thead><tbody>",
        );
        for p in &partitions {
            let state = p.state().name();
            let dead_kinds: Vec<String> = ErrorKind::ALL
                .iter()
                .filter_map(|k| {
                    let n = p.dead_lettered[k.index()].load(Relaxed);
                    (n > 0).then(|| format!("{}: {n}", k.name()))
                })
                .collect();
            let _ = write!(
                html,
                "<tr data-partition=\"{}\"><td>{}</td><td class=\"state {state}\">{state}</td><td class=\"high-watermark\">{}</td>\
<td class=\"fetched-next\">{}</td><td class=\"forwarded-next\">{}</td><td class=\"lag\">{}</td><td class=\"backlog\">{}</td>\
<td class=\"dead-letters\" title=\"{}\">{}</td></tr>",
                escape(&p.partition.to_string()),
                escape(&p.partition.to_string()),
                position(p.source_high_watermark.load(Relaxed)),
                position(p.fetched_next.load(Relaxed)),
                position(p.forwarded_next.load(Relaxed)),
                p.source_lag(),
                p.wal_backlog(),
                escape(&dead_kinds.join(", ")),
                p.dead_lettered_total(),
            );
        }
        html.push_str("</tbody></table>");
        let errors: Vec<String> = partitions
            .iter()
            .filter_map(|p| p.error().map(|e| format!("{}: {e}", p.partition)))
            .collect();
        if !errors.is_empty() {
            html.push_str("<h3>Errors</h3><ul class=\"errors\">");
            for e in errors {
                let _ = write!(html, "<li class=\"error\">{}</li>", escape(&e));
            }
            html.push_str("</ul>");
        }
        let retried: Vec<String> = [
            ("fetch", sum(&|p| p.fetch_errors.load(Relaxed))),
            ("produce", sum(&|p| p.produce_errors.load(Relaxed))),
            (
                "dead-letter produce",
                sum(&|p| p.dead_letter_errors.load(Relaxed)),
            ),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{what}: {n}"))
        .collect();
        if !retried.is_empty() {
            let _ = write!(
                html,
                "<p class=\"muted\">requests retried since start: {}</p>",
                retried.join(", ")
            );
        }
        html.push_str("</section>");
    }
    html.push_str("</body></html>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_texts_is_escaped() {
        assert_eq!(
            escape("<script>a & \"b\"</script>"),
            "&lt;script&gt;a &amp; &quot;b&quot;&lt;/script&gt;"
        );
    }

    #[test]
    fn the_chart_scales_to_the_peak() {
        let svg = chart(&[(0.0, 0.0), (5.0, 100.0), (10.0, 50.0)]);
        assert!(svg.contains("100/s"), "{svg}");
        assert!(svg.contains("last 10 s"), "{svg}");
        assert!(chart(&[(0.0, 1.0)]).contains("collecting"));
    }
}
