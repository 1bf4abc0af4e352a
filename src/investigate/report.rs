//! The HTML of `tapewatch investigate`: one self-contained file (inline
//! SVG from `chart`, inline CSS, one inline script that only counts script
//! errors; nothing fetched), laid out for a compliance analyst: the finding
//! in one sentence, the price chart with the group's orders, the book at the
//! alert's moment, the evidence against the rule's thresholds, related
//! alerts and the group's accounts, then the timeline of the group's records.

use super::filter::clock;
use super::overlay::{OrderSpan, Outcome, Rebuilt};
use crate::chart::{Axis, Chart, Format, Item, Kind as SeriesKind, Series, Span, escape, palette};
use crate::detect::state::episode::ZONE_OFFSET_NS;
use crate::event::{Px, Side};
use crate::instruments::px_string as px_string_of;

/// An alert as the report shows it.
#[derive(Clone, Debug, Default)]
pub struct AlertInfo {
    pub id: String,
    pub line: usize,
    pub rule: String,
    pub ts_ns: i64,
    pub seq: u64,
    pub account: String,
    /// The alert's parameter version and the rules' now (`rules show`).
    pub params: String,
    pub params_now: Option<String>,
    /// The evidence, flattened: key, value.
    pub evidence: Vec<(String, String)>,
    /// The rule's effective table (`rules show`), `key = value` lines.
    pub thresholds: Vec<(String, String)>,
    /// The evidence's window, when it names one.
    pub window: Option<(i64, i64)>,
}

/// A row of the timeline.
#[derive(Clone, Debug)]
pub struct Row {
    pub seq: u64,
    pub ts_ns: i64,
    pub kind: char,
    pub order_id: u64,
    pub account: String,
    pub side: Side,
    pub price: Px,
    pub qty: u64,
    pub outcome: String,
    pub late: bool,
    /// The row anchors the order's `N` (`#order-ID`).
    pub anchors_order: bool,
}

/// Everything the page shows, already resolved to names.
pub struct Report {
    pub title: String,
    pub headline: String,
    pub tape: String,
    pub instrument: String,
    pub party: String,
    pub accounts: Vec<String>,
    pub period: (i64, i64),
    pub moment: (i64, String),
    pub alert: Option<AlertInfo>,
    /// Related alerts: line, id, rule, instrument, time.
    pub related: Vec<(usize, String, String, String, i64)>,
    pub rebuilt: Rebuilt,
    pub spans: Vec<OrderSpan>,
    /// Account name per span, parallel to `spans`.
    pub span_accounts: Vec<String>,
    /// The party's open quantity per (side, price) in the book at the moment.
    pub own_at_moment: Vec<(Side, Px, u64)>,
    pub rows: Vec<Row>,
    pub rows_left_out: usize,
    pub read_note: String,
}

/// The shortest bar drawn, as a fraction of the period (1/400: a few pixels).
const MIN_BAR: i64 = 400;

/// The most rows the timeline and orders the chart show; beyond, a count.
pub const MAX_ROWS: usize = 5_000;

fn px(p: Px) -> f64 {
    p as f64 / 10_000.0
}

pub fn render(r: &Report) -> String {
    let mut h = String::with_capacity(64 * 1024);
    h += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n";
    // First, so an error anywhere below is counted (tests read it back).
    h += ERROR_HOOK;
    h += &format!("\n<title>{}</title>\n<style>{CSS}</style></head>\n<body>\n", escape(&r.title));
    h += &format!("<header><h1>{}</h1>\n<p class=\"headline\">{}</p>\n", escape(&r.title), escape(&r.headline));
    h += &format!(
        "<p class=\"meta\">Tape <code>{}</code> · instrument <b>{}</b> · {} · period {} to {} (Asia/Shanghai) · {}</p></header>\n",
        escape(&r.tape),
        escape(&r.instrument),
        escape(&r.party),
        clock(r.period.0),
        clock(r.period.1),
        escape(&r.read_note)
    );
    h += "<section><h2>Price and the group's orders</h2>\n";
    h += &price_chart(r);
    h += "<p class=\"note\">Each bar is one of the group's orders at its limit price, from entry to cancel or fill \
          (open at the period's end: to the right edge; one that lived only a moment is drawn a few pixels long). \
          Click a bar for its records in the timeline.</p></section>\n";
    h += "<div class=\"cols\">\n";
    h += &book_table(r);
    h += &evidence(r);
    h += "</div>\n";
    h += &related(r);
    h += &timeline(r);
    h += "<footer>Written by tapewatch investigate. Times are event times (the matching engine's stamps) in \
          Asia/Shanghai; the book is rebuilt from the instrument's records of the day up to the moment, as \
          the engine applies them.</footer>\n</body></html>\n";
    h
}

fn price_chart(r: &Report) -> String {
    let (from, to) = r.period;
    let (x0, x1) = (from as f64, to as f64);
    let b = &r.rebuilt;
    // The book's best prices before the period start hold into it.
    type Best = (i64, Option<Px>, Option<Px>);
    let step = |pick: fn(&Best) -> Option<Px>| -> Vec<(f64, f64)> {
        let mut pts: Vec<(f64, f64)> =
            b.best.iter().filter_map(|p| pick(p).map(|v| ((p.0 as f64).max(x0), px(v)))).collect();
        if let Some(&(_, y)) = pts.last() {
            pts.push((x1, y));
        }
        pts
    };
    let bids = step(|p| p.1);
    let asks = step(|p| p.2);
    let mut chart = Chart::new(&format!("{} — best bid and ask, trades, and the group's orders", r.instrument))
        .id("price")
        .size(1100.0, 380.0)
        .x(Axis::clock("event time (Asia/Shanghai)", ZONE_OFFSET_NS).range(x0, x1))
        .y(Axis::linear("price").format(Format::number("")))
        .series(Series::step("best bid", palette::BLUE, bids).width(1.5))
        .series(Series::step("best ask", palette::ORANGE, asks).width(1.5))
        .series(Series::points("trades", palette::GREY, b.trades.iter().map(|t| (t.0 as f64, px(t.1)))));
    for (side, name, color) in
        [(Side::Buy, "group buy orders", palette::GREEN), (Side::Sell, "group sell orders", palette::RED)]
    {
        let items: Vec<Item> = r
            .spans
            .iter()
            .zip(&r.span_accounts)
            .filter(|(s, _)| s.side == side)
            .take(MAX_ROWS)
            .map(|(s, account)| {
                // An order that lived a moment (filled or cancelled at once)
                // is drawn at least MIN_BAR of the period long, or it would not show.
                let start = s.entry_ts.max(from);
                let end = s.end_ts.unwrap_or(to).min(to).max(start + (to - from) / MIN_BAR);
                Item::segment(start as f64, end as f64, px(s.price))
                    .tip(format!(
                        "order {} ({account}): {} {} at {}, entered {}, {}",
                        s.order_id,
                        if s.side == Side::Buy { "buy" } else { "sell" },
                        s.qty,
                        px_string_of(s.price),
                        clock(s.entry_ts),
                        outcome_text(s)
                    ))
                    .href(format!("#order-{}", s.order_id))
            })
            .collect();
        chart = chart.series(Series::new(SeriesKind::Segments, name, color, items).width(4.0));
    }
    if let Some(a) = &r.alert {
        if let Some((w0, w1)) = a.window {
            chart = chart.span(Span::new((w0 as f64).max(x0), (w1 as f64).min(x1), "#fdd").legend("rule's window"));
        }
        chart = chart.mark(a.ts_ns as f64, format!("alert {}", clock(a.ts_ns)), palette::RED);
    } else {
        chart = chart.mark(r.moment.0 as f64, r.moment.1.clone(), palette::PURPLE);
    }
    chart.render()
}

fn outcome_text(s: &OrderSpan) -> String {
    let life = |end: i64| format!("{:.3} s after entry", (end - s.entry_ts) as f64 / 1e9);
    match (s.outcome, s.end_ts) {
        (Outcome::Filled, Some(end)) => format!("filled, {}", life(end)),
        (Outcome::Cancelled, Some(end)) if s.filled > 0 => {
            format!("{} filled, rest cancelled {}", s.filled, life(end))
        }
        (Outcome::Cancelled, Some(end)) => format!("cancelled {}", life(end)),
        _ if s.filled > 0 => format!("{} filled, rest still open", s.filled),
        _ => "still open".to_string(),
    }
}

fn book_table(r: &Report) -> String {
    let own = |side: Side, price: Px| {
        r.own_at_moment.iter().filter(|o| o.0 == side && o.1 == price).map(|o| o.2).sum::<u64>()
    };
    let mut h = format!(
        "<section class=\"book\"><h2>Book at {}</h2>\n<p class=\"note\">{} Best 10 levels; the group's open quantity \
         highlighted.</p>\n<table class=\"book\"><thead><tr><th>side</th><th>price</th><th>qty</th><th>orders</th>\
         <th>group's qty</th></tr></thead><tbody>\n",
        clock(r.moment.0),
        escape(&r.moment.1)
    );
    let row = |h: &mut String, side: Side, l: &crate::detect::views::book::Level| {
        let mine = own(side, l.price);
        let class = match (side, mine > 0) {
            (Side::Sell, true) => "ask own",
            (Side::Sell, false) => "ask",
            (Side::Buy, true) => "bid own",
            (Side::Buy, false) => "bid",
        };
        *h += &format!(
            "<tr class=\"{class}\"><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td></tr>\n",
            if side == Side::Buy { "bid" } else { "ask" },
            px_string_of(l.price),
            group_digits(l.qty),
            l.orders,
            if mine > 0 { group_digits(mine) } else { String::new() }
        );
    };
    for l in r.rebuilt.asks.iter().rev() {
        row(&mut h, Side::Sell, l);
    }
    if r.rebuilt.asks.is_empty() && r.rebuilt.bids.is_empty() {
        h += "<tr><td colspan=\"5\">(empty book)</td></tr>\n";
    }
    for l in &r.rebuilt.bids {
        row(&mut h, Side::Buy, l);
    }
    h += "</tbody></table></section>\n";
    h
}

fn evidence(r: &Report) -> String {
    let mut h = String::from("<section class=\"evidence\">");
    match &r.alert {
        Some(a) => {
            h += &format!(
                "<h2>Alert {}</h2>\n<p class=\"note\">Line {} of the alerts file; rule <b>{}</b>, triggered by record \
                 <a href=\"#r{}\">seq {}</a> ({}) at {}.</p>\n",
                escape(&a.id),
                a.line,
                escape(&a.rule),
                a.seq,
                a.seq,
                escape(&a.account),
                clock(a.ts_ns)
            );
            h += "<table class=\"kv\"><thead><tr><th>evidence</th><th>value</th></tr></thead><tbody>\n";
            for (k, v) in &a.evidence {
                h += &format!("<tr><td>{}</td><td class=\"num\">{}</td></tr>\n", escape(k), escape(v));
            }
            h += "</tbody></table>\n";
            h += "<table class=\"kv\"><thead><tr><th>rule's threshold</th><th>value</th></tr></thead><tbody>\n";
            for (k, v) in &a.thresholds {
                h += &format!("<tr><td>{}</td><td class=\"num\">{}</td></tr>\n", escape(k), escape(v));
            }
            h += "</tbody></table>\n";
            let version = match &a.params_now {
                Some(now) if *now == a.params => {
                    format!("Parameter version {} (the rules given now have the same version).", a.params)
                }
                Some(now) => format!(
                    "Parameter version {} made this alert; the rules given now have version {now}: the thresholds \
                     above are today's, not the alert's.",
                    a.params
                ),
                None => format!("Parameter version {}; the rule is off in the rules given now.", a.params),
            };
            h += &format!("<p class=\"note\">{}</p>\n", escape(&version));
        }
        None => {
            h += "<h2>Selection</h2>\n<p class=\"note\">No alert: the group's trading in the period chosen.</p>\n";
        }
    }
    h += "<h2>Accounts of the group</h2>\n<p>";
    h += &r.accounts.iter().map(|a| format!("<code>{}</code>", escape(a))).collect::<Vec<_>>().join(" ");
    h += "</p></section>\n";
    h
}

fn related(r: &Report) -> String {
    let mut h = String::from("<section><h2>Related alerts of the group</h2>\n");
    if r.related.is_empty() {
        h += "<p class=\"note\">None in the alerts file.</p></section>\n";
        return h;
    }
    h += "<table><thead><tr><th>line</th><th>time</th><th>rule</th><th>instrument</th><th>alert id</th></tr></thead><tbody>\n";
    for (line, id, rule, instrument, ts) in &r.related {
        h += &format!(
            "<tr><td class=\"num\">{line}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>\n",
            clock(*ts),
            escape(rule),
            escape(instrument),
            escape(id)
        );
    }
    h += "</tbody></table></section>\n";
    h
}

fn timeline(r: &Report) -> String {
    let mut h = format!(
        "<section><h2>Timeline of the group's records on {} in the period</h2>\n<table class=\"timeline\"><thead><tr>\
         <th>seq</th><th>time</th><th>kind</th><th>order</th><th>account</th><th>side</th><th>price</th><th>qty</th>\
         <th>outcome</th></tr></thead><tbody>\n",
        escape(&r.instrument)
    );
    let alert_seq = r.alert.as_ref().map(|a| a.seq);
    for row in &r.rows {
        let id = if row.anchors_order { format!("order-{}", row.order_id) } else { format!("r{}", row.seq) };
        let mut class = String::new();
        if Some(row.seq) == alert_seq {
            class += "alert-row ";
        }
        if row.late {
            class += "late ";
        }
        class += match row.kind {
            'N' => "new",
            'C' => "cancel",
            _ => "trade",
        };
        // The alert's record is linked as `#rSEQ` even when it is an `N`.
        let extra = if row.anchors_order { format!("<a id=\"r{}\"></a>", row.seq) } else { String::new() };
        h += &format!(
            "<tr id=\"{id}\" class=\"{class}\"><td class=\"num\">{extra}{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>\n",
            row.seq,
            clock_us(row.ts_ns),
            match row.kind {
                'N' => "new",
                'C' => "cancel",
                _ => "trade",
            },
            row.order_id,
            escape(&row.account),
            if row.side == Side::Buy { "buy" } else { "sell" },
            px_string_of(row.price),
            group_digits(row.qty),
            escape(&row.outcome)
        );
    }
    if r.rows_left_out > 0 {
        h += &format!(
            "<tr><td colspan=\"9\">… and {} more records (first {MAX_ROWS} shown)</td></tr>\n",
            r.rows_left_out
        );
    }
    if r.rows.is_empty() {
        h += "<tr><td colspan=\"9\">The group has no record on this instrument in the period.</td></tr>\n";
    }
    h += "</tbody></table></section>\n";
    h
}

/// `HH:MM:SS.ffffff`.
fn clock_us(ts_ns: i64) -> String {
    let ms = clock(ts_ns);
    format!("{ms}{:03}", ts_ns.rem_euclid(1_000_000) / 1_000)
}

/// `12345678` as `12,345,678`.
pub fn group_digits(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The same hook as `tests/common/browser.rs::ERROR_HOOK`: every uncaught
/// error counted on `<body data-errors>`, so a headless test sees it.
const ERROR_HOOK: &str = r#"<script>(function(){var n=0,t=[];function note(m){n++;t.push(String(m));var b=document.body;if(b){b.dataset.errors=n;b.dataset.errorText=t.join(' | ');}}window.addEventListener('error',function(e){note(e.message+' at '+e.filename+':'+e.lineno);});window.addEventListener('unhandledrejection',function(e){note('unhandled rejection: '+e.reason);});document.addEventListener('DOMContentLoaded',function(){document.body.dataset.errors=n;});})();</script>"#;

const CSS: &str = "
body{font-family:system-ui,'Segoe UI',Roboto,'DejaVu Sans',Arial,sans-serif;margin:24px auto;max-width:1160px;color:#222;background:#fff;font-size:14px}
h1{font-size:22px;margin:0 0 6px}h2{font-size:16px;margin:18px 0 6px}
.headline{font-size:17px;background:#fff8e1;border-left:4px solid #f0a500;padding:10px 14px;margin:8px 0}
.meta,.note{color:#555}.note{font-size:13px}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 8px;border-bottom:1px solid #e5e5e5;text-align:left}
th{background:#f4f4f4;position:sticky;top:0}td.num{text-align:right;font-variant-numeric:tabular-nums}
.cols{display:flex;gap:32px;align-items:flex-start;flex-wrap:wrap}
tr.ask td{color:#b22}tr.bid td{color:#1a5fa0}tr.own td{background:#fff1a8;font-weight:600}
tr.alert-row td{background:#fde2e2;font-weight:600}tr.late td{color:#999;font-style:italic}
tr:target td{background:#d6ecff}
table.timeline{width:100%}code{font-size:12px}
footer{margin-top:24px;color:#777;font-size:12px}
svg{max-width:100%;height:auto}
";
