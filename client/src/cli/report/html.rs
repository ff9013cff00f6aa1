//! The report as one self-contained HTML page: inline CSS, the chart as inline SVG, no
//! script, font, image or stylesheet fetched from anywhere. Principals, aliases, key ids
//! and reasons come from callers (a client certificate names its own principal), so
//! every piece of text goes through [`esc`]; markup is only ever built from constants.

use std::fmt::Write as _;

use super::Report;
use super::chart::{css_color, hourly_svg};
use super::figures::{Call, hour_label, sum};
use crate::cli::tally::{Counts, OUTCOME_NAMES};

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222;max-width:1200px}\
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.2em .6em;\
text-align:left;vertical-align:top}td.n,th.n{text-align:right}th{background:#f3f3f3}\
.summary{font-size:1.1em;background:#f6f6ff;border:1px solid #99c;padding:.8em}\
.ok{color:#1a7f37;font-weight:bold}.bad{color:#c11;font-weight:bold}\
.legend span{display:inline-block;width:.9em;height:.9em;margin:0 .3em 0 1em;\
vertical-align:middle}code{word-break:break-all}.signoff td{width:16em;height:1.6em}";

/// Escapes text for HTML element content and quoted attributes.
pub fn esc(text: &str) -> String {
    html_escape::encode_safe(text).into_owned()
}

/// Renders the whole page.
pub fn render(r: &Report<'_>) -> Result<String, String> {
    let mut h = String::with_capacity(64 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>hsmd audit review {} to {}</title><style>{STYLE}</style></head><body>\n\
         <h1>hsmd audit review</h1>\n<p>Records from <b>{}</b> to <b>{}</b> (UTC). \
         Generated {} by hsmctl {} from {}.</p>\n",
        esc(&r.since),
        esc(&r.until),
        esc(&r.since),
        esc(&r.until),
        esc(&r.generated),
        env!("CARGO_PKG_VERSION"),
        esc(&r.endpoint),
    );
    summary(&mut h, r);
    hourly(&mut h, r)?;
    top_principals(&mut h, r);
    top_keys(&mut h, r);
    refusals(&mut h, r);
    lifecycle(&mut h, r);
    checkpoints(&mut h, r);
    stats(&mut h, r);
    h.push_str("</body></html>\n");
    Ok(h)
}

fn summary(h: &mut String, r: &Report<'_>) {
    let _ = write!(
        h,
        "<section id=\"summary\"><h2>Summary</h2><p class=\"summary\">{}</p>\n\
         <table class=\"signoff\"><tr><th>Reviewed by</th><td></td><th>Date</th><td></td>\
         <th>Signature</th><td></td></tr></table></section>\n",
        esc(&r.summary())
    );
}

fn counts_header(h: &mut String, first: &[&str]) {
    h.push_str("<tr>");
    for name in first {
        let _ = write!(h, "<th>{name}</th>");
    }
    for name in OUTCOME_NAMES {
        let _ = write!(h, "<th class=\"n\">{name}</th>");
    }
    h.push_str("<th class=\"n\">total</th></tr>\n");
}

fn counts_cells(h: &mut String, c: &Counts) {
    for n in c {
        let _ = write!(h, "<td class=\"n\">{n}</td>");
    }
    let _ = writeln!(h, "<td class=\"n\">{}</td></tr>", sum(c));
}

fn hourly(h: &mut String, r: &Report<'_>) -> Result<(), String> {
    let f = r.figures;
    h.push_str(
        "<section id=\"calls-per-hour\"><h2>Calls per hour by outcome</h2>\n<p class=\"legend\">",
    );
    for (i, name) in OUTCOME_NAMES.iter().enumerate() {
        let _ = write!(
            h,
            "<span style=\"background:{}\"></span>{name}",
            css_color(i)
        );
    }
    h.push_str("</p>\n<figure>");
    h.push_str(&hourly_svg(&f.hours, r.first_hour, r.last_hour)?);
    h.push_str("</figure>\n<details><summary>Hours with calls</summary><table>");
    counts_header(h, &["hour (UTC)"]);
    for (hour, c) in &f.hours {
        let _ = write!(h, "<tr><td>{}</td>", esc(&hour_label(*hour)));
        counts_cells(h, c);
    }
    h.push_str("</table></details></section>\n");
    Ok(())
}

fn top_principals(h: &mut String, r: &Report<'_>) {
    h.push_str("<section id=\"top-principals\"><h2>Top principals</h2><table>");
    counts_header(h, &["principal"]);
    for (p, c) in r.figures.top_principals(r.top) {
        let _ = write!(h, "<tr><td>{}</td>", esc(or_none(&p)));
        counts_cells(h, &c);
    }
    h.push_str("</table></section>\n");
}

fn top_keys(h: &mut String, r: &Report<'_>) {
    h.push_str("<section id=\"top-keys\"><h2>Top keys</h2><table>");
    counts_header(h, &["key", "aliases named"]);
    for (k, t) in r.figures.top_keys(r.top) {
        let aliases: Vec<&str> = t.aliases.iter().map(String::as_str).collect();
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td>",
            esc(k),
            esc(&aliases.join(", "))
        );
        counts_cells(h, &t.counts);
    }
    h.push_str("</table></section>\n");
}

fn refusals(h: &mut String, r: &Report<'_>) {
    let groups = r.figures.refusals();
    let _ = writeln!(
        h,
        "<section id=\"refusals\"><h2>Denied, throttled and failed calls</h2>\
         <p>{} calls in {} groups (principal, outcome, reason), largest first.</p>",
        groups.iter().map(|g| g.calls.len()).sum::<usize>(),
        groups.len()
    );
    for g in &groups {
        let _ = writeln!(
            h,
            "<h3>{} &mdash; {} {} ({} {})</h3><table><tr><th>time</th><th class=\"n\">seq</th>\
             <th>method</th><th>key</th><th>status</th></tr>",
            esc(or_none(&g.principal)),
            g.outcome,
            esc(or_none(&g.reason)),
            g.calls.len(),
            if g.calls.len() == 1 { "call" } else { "calls" }
        );
        for c in &g.calls {
            call_row(h, c, &[&c.method, c.key(), &c.status]);
        }
        h.push_str("</table>\n");
    }
    h.push_str("</section>\n");
}

fn lifecycle(h: &mut String, r: &Report<'_>) {
    let events = &r.figures.lifecycle;
    let _ = writeln!(
        h,
        "<section id=\"lifecycle\"><h2>Key lifecycle events</h2><p>{} events (calls that \
         succeeded: created, enabled, disabled, deletion scheduled or cancelled, material \
         imported or deleted, rotated).</p><table><tr><th>time</th><th class=\"n\">seq</th>\
         <th>event</th><th>key</th><th>alias</th><th>principal</th></tr>",
        events.len()
    );
    for (event, c) in events {
        call_row(h, c, &[event, &c.key_id, &c.alias, &c.principal]);
    }
    h.push_str("</table></section>\n");
}

/// `<tr>` with time, sequence and `rest`, each escaped.
fn call_row(h: &mut String, c: &Call, rest: &[&str]) {
    let _ = write!(
        h,
        "<tr><td>{}</td><td class=\"n\">{}</td>",
        esc(&c.time),
        c.sequence
    );
    for cell in rest {
        let _ = write!(h, "<td>{}</td>", esc(cell));
    }
    h.push_str("</tr>\n");
}

fn checkpoints(h: &mut String, r: &Report<'_>) {
    let v = r.verify;
    let verdict = if v.ok {
        "<span class=\"ok\">verified</span>"
    } else {
        "<span class=\"bad\">BROKEN</span>"
    };
    let _ = write!(
        h,
        "<section id=\"checkpoints\"><h2>Checkpoint status</h2><p>The whole log on the \
         server, checked now (hash chain and checkpoint signatures): {verdict}.</p>\
         <table><tr><th>records checked</th><td class=\"n\">{}</td></tr>\
         <tr><th>checkpoints verified</th><td class=\"n\">{}</td></tr>\
         <tr><th>last checkpoint (seq)</th><td class=\"n\">{}</td></tr>\
         <tr><th>records after it, not yet signed</th><td class=\"n\">{}</td></tr>\
         <tr><th>head hash</th><td><code>{}</code></td></tr>",
        v.records_checked,
        v.checkpoints_verified,
        v.last_checkpoint_sequence,
        v.unsigned_records,
        esc(&v.head_hash),
    );
    if !v.ok {
        let _ = write!(
            h,
            "<tr><th>first bad record</th><td>seq {} (line {}): {}</td></tr>",
            v.first_bad_sequence,
            v.first_bad_line,
            esc(&v.problem)
        );
    }
    h.push_str("</table>");
    if !v.problems.is_empty() {
        h.push_str("<ul>");
        for p in &v.problems {
            let _ = write!(h, "<li>{}</li>", esc(p));
        }
        h.push_str("</ul>");
    }
    h.push_str("</section>\n");
}

fn stats(h: &mut String, r: &Report<'_>) {
    h.push_str(
        "<section id=\"stats\"><h2>Calls per principal and method</h2>\
         <p>The figures of <code>hsmctl audit stats</code> for the same range.</p><table>",
    );
    counts_header(h, &["principal", "method"]);
    for (p, m, c) in r.figures.stats.rows() {
        let _ = write!(h, "<tr><td>{}</td><td>{}</td>", esc(or_none(p)), esc(m));
        counts_cells(h, c);
    }
    h.push_str("<tr><th>TOTAL</th><th></th>");
    counts_cells(h, &r.figures.totals());
    h.push_str("</table></section>\n");
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "(none)" } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#x27;x&#x27;)&lt;&#x2F;script&gt;&amp;&quot;"
        );
    }
}
