//! The credits page (`GET /admin/`): every tenant's budget, recent spend,
//! forecast and savings, as one server-rendered HTML page.
//!
//! No JavaScript and no external resource: inline CSS, and inline SVG for the
//! budget bars and the hourly spend, each with a text alternative (an SVG
//! `<title>` named by `aria-labelledby`, and a table a screen reader reads
//! for the chart), so the page reads the same without sight or scripts.
//! Every string that comes from the config (tenant ids) is escaped.

use std::fmt::Write as _;

use jiff::Timestamp;

use super::UsageRow;

/// The whole page for `rows`, as of `generated_at` (RFC 3339).
pub(super) fn render(rows: &[UsageRow], generated_at: &str) -> String {
    let mut html = String::with_capacity(8192 + rows.len() * 6144);
    html.push_str(HEAD);
    let _ = write!(
        html,
        "<main>\n<h1>Credits</h1>\n<p>Figures as of <time datetime=\"{at}\">{at}</time> (UTC). \
         Reload the page for newer ones.</p>\n",
        at = escape(generated_at)
    );
    summary(&mut html, rows);
    for (i, row) in rows.iter().enumerate() {
        tenant_section(&mut html, i, row);
    }
    html.push_str(FOOT);
    html
}

const HEAD: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>viewgate credits</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;color:#1a1a1a;background:#fafafa}
main{max-width:64rem;margin:0 auto;padding:1.5rem}
h1{font-size:1.6rem;margin:0 0 .25rem}
h2{font-size:1.25rem;margin:0 0 .5rem}
table{border-collapse:collapse;width:100%;margin:1rem 0;background:#fff}
th,td{padding:.35rem .5rem;border-bottom:1px solid #ddd;text-align:right}
th[scope=row],thead th:first-child{text-align:left}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:1rem;margin:1rem 0}
dl{display:grid;grid-template-columns:repeat(auto-fill,minmax(11rem,1fr));gap:.5rem 1rem;margin:.75rem 0}
dt{font-size:.85rem;color:#555}
dd{margin:0;font-size:1.1rem;font-variant-numeric:tabular-nums}
.bar-used{fill:#1f5fa8}.bar-reserved{fill:#8fb3de}.bar-left{fill:#e6e6e6}
.bar-over{fill:#b3261e}.hour{fill:#1f5fa8}.axis{stroke:#999}
svg text{font-size:11px;fill:#333}
.visually-hidden{position:absolute;width:1px;height:1px;padding:0;margin:-1px;overflow:hidden;clip:rect(0,0,0,0);white-space:nowrap;border:0}
</style>
</head>
<body>
"#;

const FOOT: &str = "</main>\n</body>\n</html>\n";

/// One line per tenant: the figures side by side.
fn summary(html: &mut String, rows: &[UsageRow]) {
    html.push_str(
        "<table>\n<caption class=\"visually-hidden\">Credits per tenant this period</caption>\n\
         <thead><tr><th scope=\"col\">Tenant</th><th scope=\"col\">Used</th>\
         <th scope=\"col\">Left</th><th scope=\"col\">Spent last hour</th>\
         <th scope=\"col\">Spent last 24 h</th><th scope=\"col\">Saved by cache</th>\
         <th scope=\"col\">Hit ratio</th><th scope=\"col\">Forecast</th></tr></thead>\n<tbody>\n",
    );
    for row in rows {
        let _ = writeln!(
            html,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&row.tenant),
            row.used,
            row.remaining
                .map_or_else(|| "unlimited".to_string(), |n| n.to_string()),
            row.spent_last_hour,
            row.spent_last_day,
            row.credits_saved_cache,
            ratio(row.hit_ratio),
            escape(&forecast_words(row)),
        );
    }
    html.push_str("</tbody>\n</table>\n");
}

fn tenant_section(html: &mut String, i: usize, row: &UsageRow) {
    let tenant = escape(&row.tenant);
    let _ = writeln!(
        html,
        "<section aria-labelledby=\"tenant-{i}\" data-tenant=\"{tenant}\">\n\
         <h2 id=\"tenant-{i}\">{tenant}</h2>"
    );
    budget_bar(html, i, row);
    let figures: [(&str, &str, String); 10] = [
        ("used", "Used", credits(row.used)),
        ("left", "Left", left(row)),
        ("budget", "Budget", budget(row)),
        (
            "spent-hour",
            "Spent last hour",
            credits(row.spent_last_hour),
        ),
        ("spent-day", "Spent last 24 h", credits(row.spent_last_day)),
        ("forecast", "Forecast", forecast_words(row)),
        (
            "saved-cache",
            "Saved by the cache",
            format!(
                "{} ({})",
                credits(row.credits_saved_cache),
                plural(row.cache_hits, "hit", "hits")
            ),
        ),
        (
            "saved-coalesced",
            "Saved by coalescing",
            format!(
                "{} ({})",
                credits(row.credits_saved_coalesced),
                plural(row.coalesced, "answer", "answers")
            ),
        ),
        ("hit-ratio", "Hit ratio", ratio(row.hit_ratio)),
        ("requests", "Upstream calls", row.requests.to_string()),
    ];
    html.push_str("<dl>\n");
    for (key, label, value) in figures {
        let _ = writeln!(
            html,
            "<div><dt>{label}</dt><dd data-figure=\"{key}\">{}</dd></div>",
            escape(&value)
        );
    }
    html.push_str("</dl>\n");
    hourly_chart(html, i, row);
    html.push_str("</section>\n");
}

/// The budget as a bar: used, reserved, and left, with the figures in words.
fn budget_bar(html: &mut String, i: usize, row: &UsageRow) {
    const WIDTH: f64 = 600.0;
    let words = match row.budget {
        Some(budget) => format!(
            "{}: {} of {} used, {} reserved, {} left {}",
            row.tenant,
            row.used,
            credits(budget),
            row.reserved,
            row.remaining.unwrap_or(0),
            this_period(&row.period)
        ),
        None => format!(
            "{}: {} used, no budget limit",
            row.tenant,
            credits(row.used)
        ),
    };
    let _ = write!(
        html,
        "<svg role=\"img\" aria-labelledby=\"bar-{i}\" width=\"100%\" height=\"24\" \
         viewBox=\"0 0 600 24\" preserveAspectRatio=\"none\"><title id=\"bar-{i}\">{}</title>",
        escape(&words)
    );
    match row.budget {
        Some(budget) if budget > 0 => {
            #[allow(clippy::cast_precision_loss, reason = "pixels")]
            let part = |n: u64| (n.min(budget) as f64 / budget as f64) * WIDTH;
            let used = part(row.used);
            let reserved = part(row.used.saturating_add(row.reserved)) - used;
            let _ = write!(
                html,
                "<rect class=\"bar-left\" x=\"0\" y=\"0\" width=\"600\" height=\"24\"/>\
                 <rect class=\"{}\" x=\"0\" y=\"0\" width=\"{used:.1}\" height=\"24\"/>\
                 <rect class=\"bar-reserved\" x=\"{used:.1}\" y=\"0\" width=\"{reserved:.1}\" height=\"24\"/>",
                if row.remaining == Some(0) {
                    "bar-over"
                } else {
                    "bar-used"
                }
            );
        }
        // A budget of 0: nothing can be spent, the whole bar is "used up".
        Some(_) => {
            html.push_str("<rect class=\"bar-over\" x=\"0\" y=\"0\" width=\"600\" height=\"24\"/>")
        }
        // No limit: an empty bar; its title says so.
        None => {
            html.push_str("<rect class=\"bar-left\" x=\"0\" y=\"0\" width=\"600\" height=\"24\"/>")
        }
    }
    html.push_str("</svg>\n");
}

/// Credits charged per hour over the last day: bars, and the same as a table.
fn hourly_chart(html: &mut String, i: usize, row: &UsageRow) {
    const HEIGHT: f64 = 60.0;
    let hours = &row.spent_by_hour;
    let max = hours.iter().copied().max().unwrap_or(0);
    let _ = write!(
        html,
        "<figure>\n<figcaption id=\"hours-{i}\">Credits charged per hour, last 24 hours \
         (peak {max}; oldest on the left)</figcaption>\n\
         <svg role=\"img\" aria-labelledby=\"hours-{i}\" aria-describedby=\"hours-table-{i}\" \
         width=\"100%\" height=\"70\" viewBox=\"0 0 480 70\" preserveAspectRatio=\"none\">\
         <line class=\"axis\" x1=\"0\" y1=\"64.5\" x2=\"480\" y2=\"64.5\"/>"
    );
    for (h, &credits) in hours.iter().enumerate() {
        #[allow(clippy::cast_precision_loss, reason = "pixels")]
        let height = if max == 0 {
            0.0
        } else {
            credits as f64 / max as f64 * HEIGHT
        };
        let _ = write!(
            html,
            "<rect class=\"hour\" x=\"{}\" y=\"{:.1}\" width=\"16\" height=\"{height:.1}\"/>",
            h * 20 + 2,
            64.0 - height
        );
    }
    html.push_str("</svg>\n");
    let _ = write!(
        html,
        "<table class=\"visually-hidden\" id=\"hours-table-{i}\">\n\
         <caption>Credits charged per hour for {}</caption>\n\
         <thead><tr><th scope=\"col\">Hour (UTC)</th><th scope=\"col\">Credits</th></tr></thead>\n<tbody>\n",
        escape(&row.tenant)
    );
    let as_of: Option<Timestamp> = row.as_of.parse().ok();
    let count = hours.len();
    for (h, credits) in hours.iter().enumerate() {
        let label = as_of.map_or_else(
            || format!("{} to {} hours ago", count - h, count - h - 1),
            |at| hour_label(at, count - h),
        );
        let _ = writeln!(
            html,
            "<tr><th scope=\"row\">{}</th><td>{credits}</td></tr>",
            escape(&label)
        );
    }
    html.push_str("</tbody>\n</table>\n</figure>\n");
}

/// The span of the entry `back` hours back (1 is the last hour), as
/// `HH:MM–HH:MM`: the entry ends with the minute `back - 1` hours before
/// the current one.
fn hour_label(as_of: Timestamp, back: usize) -> String {
    let back = i64::try_from(back).unwrap_or(0);
    let minute = as_of.as_second().div_euclid(60);
    let end = (minute - 60 * (back - 1) + 1) * 60;
    let start = end - 3600;
    let hm = |s: i64| {
        Timestamp::from_second(s)
            .map_or_else(|_| "?".to_string(), |t| t.strftime("%H:%M").to_string())
    };
    format!("{}–{}", hm(start), hm(end))
}

/// `1 credit`, `2 credits`.
fn credits(n: u64) -> String {
    plural(n, "credit", "credits")
}

/// `this day`, `this month`, ..., and `in total` for a `total` budget.
fn this_period(period: &str) -> String {
    if period == "total" {
        "in total".to_string()
    } else {
        format!("this {period}")
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn left(row: &UsageRow) -> String {
    row.remaining
        .map_or_else(|| "unlimited".to_string(), credits)
}

fn budget(row: &UsageRow) -> String {
    row.budget.map_or_else(
        || "unlimited".to_string(),
        |b| match row.period.as_str() {
            "total" => format!("{} in total", credits(b)),
            period => format!("{} per {period}", credits(b)),
        },
    )
}

fn ratio(hit_ratio: Option<f64>) -> String {
    hit_ratio.map_or_else(
        || "no requests yet".to_string(),
        |r| format!("{:.0}%", r * 100.0),
    )
}

/// The forecast as a sentence.
fn forecast_words(row: &UsageRow) -> String {
    let basis = match row.forecast_basis.as_deref() {
        Some("last_hour") => " at the last hour's rate",
        Some("last_day") => " at the last day's rate",
        _ => "",
    };
    match (row.forecast.as_str(), &row.runs_out_at) {
        ("runs_out", Some(at)) => format!("runs out at {at}{basis}"),
        ("spent", _) => "budget used up".to_string(),
        ("outlasts_period", _) => format!("outlasts the period{basis}"),
        ("no_spend", _) => "no spend in the last 24 h".to_string(),
        ("unlimited", _) => "unlimited".to_string(),
        (other, _) => other.to_string(),
    }
}

/// `s` safe in HTML text and in a double-quoted attribute.
pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tenant: &str) -> UsageRow {
        UsageRow {
            tenant: tenant.to_string(),
            period: "day".into(),
            period_key: "2026-11-27".into(),
            budget: Some(50),
            used: 12,
            reserved: 0,
            remaining: Some(38),
            requests: 4,
            cache_hits: 4,
            credits_saved: 9,
            orphaned: 0,
            credits_saved_cache: 9,
            coalesced: 2,
            credits_saved_coalesced: 3,
            hit_ratio: Some(0.4),
            spent_last_hour: 12,
            spent_last_day: 12,
            spent_by_hour: {
                let mut h = vec![0; 24];
                h[23] = 12;
                h
            },
            saved_cache_last_day: 9,
            saved_coalesced_last_day: 3,
            forecast: "runs_out".into(),
            runs_out_at: Some("2026-11-27T13:10:00Z".into()),
            forecast_basis: Some("last_hour".into()),
            as_of: "2026-11-27T10:00:00Z".into(),
        }
    }

    #[test]
    fn tenant_strings_are_escaped_and_there_is_no_script() {
        let html = render(
            &[row("<script>alert(1)</script>\"x")],
            "2026-11-27T10:00:00Z",
        );
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;x"));
        assert!(html.starts_with("<!doctype html>\n<html lang=\"en\">"));
    }

    #[test]
    fn figures_and_their_text_alternatives_are_on_the_page() {
        let html = render(&[row("crm")], "2026-11-27T10:00:00Z");
        assert!(html.contains("<dd data-figure=\"used\">12 credits</dd>"));
        assert!(html.contains("<dd data-figure=\"left\">38 credits</dd>"));
        assert!(html.contains("<dd data-figure=\"hit-ratio\">40%</dd>"));
        assert!(html.contains(
            "<dd data-figure=\"forecast\">runs out at 2026-11-27T13:10:00Z at the last hour&#39;s rate</dd>"
        ));
        assert!(html.contains("crm: 12 of 50 credits used, 0 reserved, 38 left this day"));
        // The last hour of the table is the 60 minutes ending with 10:00.
        assert!(html.contains("<tr><th scope=\"row\">09:01–10:01</th><td>12</td></tr>"));
        // The first is the hour that ended 23 hours before that.
        assert!(html.contains("<tr><th scope=\"row\">10:01–11:01</th><td>0</td></tr>"));
        assert_eq!(html.matches("<tr><th scope=\"row\">").count(), 24 + 1);
    }

    #[test]
    fn total_budgets_single_credits_and_a_zero_budget_read_right() {
        let total = UsageRow {
            period: "total".into(),
            budget: Some(20),
            used: 1,
            remaining: Some(19),
            ..row("ana")
        };
        let html = render(&[total], "2026-11-27T10:00:00Z");
        assert!(html.contains("<dd data-figure=\"budget\">20 credits in total</dd>"));
        assert!(html.contains("<dd data-figure=\"used\">1 credit</dd>"));
        assert!(html.contains("ana: 1 of 20 credits used, 0 reserved, 19 left in total"));
        let zero = UsageRow {
            budget: Some(0),
            used: 0,
            remaining: Some(0),
            ..row("zero")
        };
        let html = render(&[zero], "2026-11-27T10:00:00Z");
        assert!(html.contains("<rect class=\"bar-over\" x=\"0\" y=\"0\" width=\"600\""));
    }
}
