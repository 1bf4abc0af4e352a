//! SVG charts written by hand (no plotting crate): axes with 1-2-5 ticks
//! and gridlines, log axes, event-time axes labelled with the time of day,
//! a legend naming every series, shaded spans (phases, bursts) and marks
//! (an alert's moment) labelled in a strip above the plot so they never
//! cover the title or the data, and series drawn as lines, steps, points,
//! markers or horizontal segments (an order from entry to cancel or fill).
//!
//! Output is deterministic (same chart, same bytes) and structured for
//! tests: each series is a `<g class="series" data-series="NAME">` with
//! one element per item, each legend entry a `<g class="legend-item"
//! data-series="NAME">`. Items may carry a tooltip (`<title>`) and a link
//! (an `<a href>`, e.g. to a row of a report's timeline table).
//!
//! ```
//! use tapewatch::chart::{Axis, Chart, Format, Series, palette};
//! let svg = Chart::new("latency of each alert")
//!     .x(Axis::linear("run time").format(Format::Nanos).include_zero())
//!     .y(Axis::log("ingest to alert (log)").format(Format::Nanos))
//!     .series(Series::points("self-trade", palette::BLUE, [(1e9, 2e6), (2e9, 3e6)]))
//!     .render();
//! assert!(svg.contains(r#"data-series="self-trade""#));
//! ```

pub mod axis;
pub mod svg;

pub use axis::{Axis, Format, Scale, Tick};
pub use svg::escape;

use std::fmt::Write as _;
use svg::{px, text_width};

/// Colours that stay apart on a white page (Tableau 10).
pub mod palette {
    pub const BLUE: &str = "#1f77b4";
    pub const ORANGE: &str = "#ff7f0e";
    pub const GREEN: &str = "#2ca02c";
    pub const RED: &str = "#d62728";
    pub const PURPLE: &str = "#9467bd";
    pub const BROWN: &str = "#8c564b";
    pub const PINK: &str = "#e377c2";
    pub const GREY: &str = "#7f7f7f";
    pub const OLIVE: &str = "#bcbd22";
    pub const CYAN: &str = "#17becf";
    pub const ALL: [&str; 10] = [BLUE, ORANGE, GREEN, RED, PURPLE, BROWN, PINK, GREY, OLIVE, CYAN];
}

const FONT: f64 = 13.0;
const TITLE_FONT: f64 = 16.0;
const LANE: f64 = 17.0;
/// Span and mark labels beyond this many lanes are left out (spans named
/// in the legend stay readable there).
const MAX_LANES: usize = 3;
const CLIP_PAD: f64 = 6.0;
const FONT_FAMILY: &str = "system-ui, 'Segoe UI', Roboto, 'DejaVu Sans', Arial, sans-serif";

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Points joined in the order given.
    Line,
    /// A value held until the next point (a best bid, a position).
    Step,
    /// One marker per point.
    Points,
    /// One horizontal bar per item from `x` to `x1` at `y`.
    Segments,
}

/// A marker's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    Circle,
    Square,
    Diamond,
    TriangleUp,
    TriangleDown,
    Cross,
}

/// One point or segment of a series, with an optional tooltip and link.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub x: f64,
    pub y: f64,
    /// The segment's end (segments only; equals `x` otherwise).
    pub x1: f64,
    pub tip: Option<String>,
    pub href: Option<String>,
}

impl Item {
    pub fn at(x: f64, y: f64) -> Item {
        Item { x, y, x1: x, tip: None, href: None }
    }

    pub fn segment(x0: f64, x1: f64, y: f64) -> Item {
        Item { x: x0, y, x1, tip: None, href: None }
    }

    pub fn tip(mut self, tip: impl Into<String>) -> Item {
        self.tip = Some(tip.into());
        self
    }

    pub fn href(mut self, href: impl Into<String>) -> Item {
        self.href = Some(href.into());
        self
    }

    fn finite(&self) -> bool {
        self.x.is_finite() && self.y.is_finite() && self.x1.is_finite()
    }
}

/// A named series: its items, how they are drawn, and its colour.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub color: String,
    pub kind: Kind,
    pub shape: Shape,
    pub width: f64,
    /// An SVG `stroke-dasharray`, e.g. "6,3".
    pub dash: Option<String>,
    pub items: Vec<Item>,
}

impl Series {
    pub fn new(kind: Kind, name: &str, color: &str, items: impl IntoIterator<Item = Item>) -> Series {
        let (shape, width) = match kind {
            Kind::Segments => (Shape::Square, 3.0),
            Kind::Points => (Shape::Circle, 1.5),
            _ => (Shape::Circle, 1.8),
        };
        Series {
            name: name.to_string(),
            color: color.to_string(),
            kind,
            shape,
            width,
            dash: None,
            items: items.into_iter().collect(),
        }
    }

    pub fn line(name: &str, color: &str, points: impl IntoIterator<Item = (f64, f64)>) -> Series {
        Series::new(Kind::Line, name, color, points.into_iter().map(|(x, y)| Item::at(x, y)))
    }

    pub fn step(name: &str, color: &str, points: impl IntoIterator<Item = (f64, f64)>) -> Series {
        Series::new(Kind::Step, name, color, points.into_iter().map(|(x, y)| Item::at(x, y)))
    }

    pub fn points(name: &str, color: &str, points: impl IntoIterator<Item = (f64, f64)>) -> Series {
        Series::new(Kind::Points, name, color, points.into_iter().map(|(x, y)| Item::at(x, y)))
    }

    /// Points drawn with `shape` (trades, an alert's orders).
    pub fn markers(name: &str, color: &str, shape: Shape, points: impl IntoIterator<Item = (f64, f64)>) -> Series {
        Series::points(name, color, points).shape(shape)
    }

    /// Horizontal segments `(x0, x1, y)`.
    pub fn segments(name: &str, color: &str, segments: impl IntoIterator<Item = (f64, f64, f64)>) -> Series {
        Series::new(Kind::Segments, name, color, segments.into_iter().map(|(a, b, y)| Item::segment(a, b, y)))
    }

    pub fn shape(mut self, shape: Shape) -> Series {
        self.shape = shape;
        self
    }

    /// Line width, or a marker's radius scale for points.
    pub fn width(mut self, width: f64) -> Series {
        self.width = width;
        self
    }

    pub fn dash(mut self, dash: &str) -> Series {
        self.dash = Some(dash.to_string());
        self
    }
}

/// A shaded stretch of x (a phase, a burst), its label written above the
/// plot and, when `legend` is set, one legend entry per distinct name.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub x0: f64,
    pub x1: f64,
    pub color: String,
    pub label: Option<String>,
    pub legend: Option<String>,
}

impl Span {
    pub fn new(x0: f64, x1: f64, color: &str) -> Span {
        Span { x0, x1, color: color.to_string(), label: None, legend: None }
    }

    pub fn label(mut self, label: impl Into<String>) -> Span {
        self.label = Some(label.into());
        self
    }

    pub fn legend(mut self, name: impl Into<String>) -> Span {
        self.legend = Some(name.into());
        self
    }
}

/// A vertical mark at `x` (an alert's moment), labelled above the plot.
#[derive(Clone, Debug, PartialEq)]
pub struct Mark {
    pub x: f64,
    pub label: String,
    pub color: String,
}

/// A horizontal reference line at `y` (p99, a threshold), labelled at the
/// plot's right edge.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub y: f64,
    pub label: String,
    pub color: String,
    pub dash: Option<String>,
}

/// One chart: a title, two axes, and what is drawn between them.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    pub title: String,
    pub subtitle: Option<String>,
    /// Prefix of the chart's element ids (its clip path); distinct per
    /// chart on one page.
    pub id: String,
    pub width: f64,
    pub plot_height: f64,
    pub x: Axis,
    pub y: Axis,
    pub series: Vec<Series>,
    pub spans: Vec<Span>,
    pub marks: Vec<Mark>,
    pub rules: Vec<Rule>,
}

impl Chart {
    pub fn new(title: &str) -> Chart {
        let id: String = title
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
            .take(40)
            .collect();
        Chart {
            title: title.to_string(),
            subtitle: None,
            id: format!("chart-{id}"),
            width: 960.0,
            plot_height: 300.0,
            x: Axis::linear(""),
            y: Axis::linear(""),
            series: Vec::new(),
            spans: Vec::new(),
            marks: Vec::new(),
            rules: Vec::new(),
        }
    }

    pub fn subtitle(mut self, text: impl Into<String>) -> Chart {
        self.subtitle = Some(text.into());
        self
    }

    pub fn id(mut self, id: &str) -> Chart {
        self.id = id.to_string();
        self
    }

    /// Width of the whole chart and height of its plot area, in pixels.
    pub fn size(mut self, width: f64, plot_height: f64) -> Chart {
        self.width = width;
        self.plot_height = plot_height;
        self
    }

    pub fn x(mut self, axis: Axis) -> Chart {
        self.x = axis;
        self
    }

    pub fn y(mut self, axis: Axis) -> Chart {
        self.y = axis;
        self
    }

    pub fn series(mut self, series: Series) -> Chart {
        self.series.push(series);
        self
    }

    pub fn span(mut self, span: Span) -> Chart {
        self.spans.push(span);
        self
    }

    pub fn mark(mut self, x: f64, label: impl Into<String>, color: &str) -> Chart {
        self.marks.push(Mark { x, label: label.into(), color: color.to_string() });
        self
    }

    pub fn rule(mut self, y: f64, label: impl Into<String>, color: &str, dash: Option<&str>) -> Chart {
        self.rules.push(Rule { y, label: label.into(), color: color.to_string(), dash: dash.map(str::to_string) });
        self
    }

    /// The chart as a standalone `<svg>` element (also valid inline in HTML).
    pub fn render(&self) -> String {
        let (body, height) = self.body();
        let mut out = String::with_capacity(body.len() + 300);
        open_svg(&mut out, self.width, height, Some(&self.title));
        out.push_str(&body);
        out.push_str("</svg>\n");
        out
    }

    /// The chart's elements and its total height.
    fn body(&self) -> (String, f64) {
        let mut out = String::new();
        let w = self.width;
        let right_pad = 24.0;

        // Extents: what the axes must show.
        let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) =
            (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
        let y_log = self.y.scale == Scale::Log;
        let x_log = self.x.scale == Scale::Log;
        let mut take_x = |v: f64| {
            if v.is_finite() && (!x_log || v > 0.0) {
                x_lo = x_lo.min(v);
                x_hi = x_hi.max(v);
            }
        };
        for item in self.series.iter().flat_map(|s| &s.items).filter(|i| i.finite()) {
            take_x(item.x);
            take_x(item.x1);
        }
        for s in &self.spans {
            take_x(s.x0);
            take_x(s.x1);
        }
        for m in &self.marks {
            take_x(m.x);
        }
        let mut take_y = |v: f64| {
            if v.is_finite() && (!y_log || v > 0.0) {
                y_lo = y_lo.min(v);
                y_hi = y_hi.max(v);
            }
        };
        for item in self.series.iter().flat_map(|s| &s.items).filter(|i| i.finite()) {
            take_y(item.y);
        }
        for r in &self.rules {
            take_y(r.y);
        }
        let empty = !self.series.iter().flat_map(|s| &s.items).any(Item::finite);

        let y_target = (self.plot_height / 45.0).round() as usize;
        let (y_domain, y_ticks) = self.y.layout(y_lo, y_hi, y_target);
        let y_label_w = y_ticks.iter().map(|t| text_width(&t.label, FONT)).fold(0.0, f64::max);
        let left = 12.0 + if self.y.title.is_empty() { 0.0 } else { FONT + 10.0 } + y_label_w + 10.0;
        let plot_w = (w - left - right_pad).max(50.0);
        let x_target = (plot_w / 110.0).round() as usize;
        let (x_domain, x_ticks) = self.x.layout(x_lo, x_hi, x_target);
        let x_of = |v: f64| self.x.map(v, x_domain, left, left + plot_w);

        // Header: title, subtitle, legend rows.
        let mut y = 8.0 + TITLE_FONT;
        let _ = writeln!(
            out,
            r##"<text class="title" x="{}" y="{}" font-size="{TITLE_FONT}" font-weight="600" fill="#222">{}</text>"##,
            px(left),
            px(y),
            escape(&self.title)
        );
        if let Some(sub) = &self.subtitle {
            y += FONT + 6.0;
            let _ = writeln!(
                out,
                r##"<text class="subtitle" x="{}" y="{}" fill="#555">{}</text>"##,
                px(left),
                px(y),
                escape(sub)
            );
        }
        y += 10.0;
        y = self.legend(&mut out, left, w - right_pad, y);

        // Label strip: span and mark labels in lanes above the plot.
        let mut labels: Vec<(f64, f64, &str, &str)> = Vec::new(); // (centre, width, text, colour)
        for s in &self.spans {
            if let Some(label) = &s.label {
                let (a, b) = (x_of(s.x0).max(left), x_of(s.x1).min(left + plot_w));
                labels.push(((a + b) / 2.0, text_width(label, FONT - 1.0) + 8.0, label, &s.color));
            }
        }
        for m in &self.marks {
            labels.push((x_of(m.x), text_width(&m.label, FONT - 1.0) + 8.0, &m.label, &m.color));
        }
        let mut lanes: Vec<f64> = Vec::new(); // right end of the last label in each lane
        let mut placed: Vec<(usize, f64, &str, &str)> = Vec::new();
        for &(centre, width, text, color) in &labels {
            let a = (centre - width / 2.0).clamp(left, (left + plot_w - width).max(left));
            match lanes.iter().position(|&end| end <= a) {
                Some(lane) => {
                    lanes[lane] = a + width;
                    placed.push((lane, a, text, color));
                }
                None if lanes.len() < MAX_LANES => {
                    lanes.push(a + width);
                    placed.push((lanes.len() - 1, a, text, color));
                }
                None => {}
            }
        }
        let strip = lanes.len() as f64 * LANE;
        let top = y + strip + 4.0;
        let bottom = top + self.plot_height;
        for &(lane, a, text, color) in &placed {
            let _ = writeln!(
                out,
                r#"<text class="span-label" x="{}" y="{}" font-size="{}" fill="{}">{}</text>"#,
                px(a + 4.0),
                px(y + lane as f64 * LANE + FONT),
                FONT - 1.0,
                escape(color),
                escape(text)
            );
        }
        let y_of = |v: f64| self.y.map(v, y_domain, bottom, top);

        // Plot area, shaded spans, gridlines.
        let clip = format!("{}-plot", self.id);
        let _ = writeln!(
            out,
            r#"<clipPath id="{}"><rect x="{}" y="{}" width="{}" height="{}"/></clipPath>"#,
            escape(&clip),
            // A marker on the plot's edge shows whole.
            px(left - CLIP_PAD),
            px(top - CLIP_PAD),
            px(plot_w + 2.0 * CLIP_PAD),
            px(self.plot_height + 2.0 * CLIP_PAD)
        );
        let _ = writeln!(
            out,
            r##"<rect class="plot" x="{}" y="{}" width="{}" height="{}" fill="#fcfcfc"/>"##,
            px(left),
            px(top),
            px(plot_w),
            px(self.plot_height)
        );
        let _ = writeln!(out, r#"<g class="spans" clip-path="url(#{})">"#, escape(&clip));
        for s in &self.spans {
            let (a, b) = (x_of(s.x0).clamp(left, left + plot_w), x_of(s.x1).clamp(left, left + plot_w));
            let name = s.legend.as_deref().or(s.label.as_deref()).unwrap_or("");
            let _ = writeln!(
                out,
                r#"<rect data-span="{}" x="{}" y="{}" width="{}" height="{}" fill="{}" fill-opacity="0.14"/>"#,
                escape(name),
                px(a.min(b)),
                px(top),
                px((b - a).abs().max(1.0)),
                px(self.plot_height),
                escape(&s.color)
            );
        }
        out.push_str("</g>\n<g class=\"grid\">\n");
        for t in &y_ticks {
            let yy = y_of(t.value);
            let _ = writeln!(
                out,
                r#"<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}"/>"#,
                px(left),
                px(left + plot_w),
                px(yy),
                px(yy),
                if t.major { "#dddddd" } else { "#efefef" }
            );
        }
        for t in &x_ticks {
            let xx = x_of(t.value);
            let _ = writeln!(
                out,
                r#"<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}"/>"#,
                px(xx),
                px(xx),
                px(top),
                px(bottom),
                if t.major { "#dddddd" } else { "#efefef" }
            );
        }
        out.push_str("</g>\n");

        // Axes: lines, ticks, labels, titles.
        let _ = writeln!(
            out,
            r##"<g class="axis x-axis" data-title="{}" fill="#333" text-anchor="middle">"##,
            escape(&self.x.title)
        );
        let _ = writeln!(
            out,
            r##"<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#444"/>"##,
            px(left),
            px(left + plot_w),
            px(bottom),
            px(bottom)
        );
        for t in x_ticks.iter().filter(|t| t.major) {
            let xx = x_of(t.value);
            let _ = writeln!(
                out,
                r##"<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#444"/><text class="tick" x="{}" y="{}">{}</text>"##,
                px(xx),
                px(xx),
                px(bottom),
                px(bottom + 5.0),
                px(xx),
                px(bottom + 6.0 + FONT),
                escape(&t.label)
            );
        }
        if !self.x.title.is_empty() {
            let _ = writeln!(
                out,
                r#"<text class="axis-title" x="{}" y="{}">{}</text>"#,
                px(left + plot_w / 2.0),
                px(bottom + 12.0 + 2.0 * FONT),
                escape(&self.x.title)
            );
        }
        out.push_str("</g>\n");
        let _ = writeln!(
            out,
            r##"<g class="axis y-axis" data-title="{}" fill="#333" text-anchor="end">"##,
            escape(&self.y.title)
        );
        let _ = writeln!(
            out,
            r##"<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#444"/>"##,
            px(left),
            px(left),
            px(top),
            px(bottom)
        );
        for t in y_ticks.iter().filter(|t| t.major) {
            let yy = y_of(t.value);
            let _ = writeln!(
                out,
                r##"<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#444"/><text class="tick" x="{}" y="{}">{}</text>"##,
                px(left - 5.0),
                px(left),
                px(yy),
                px(yy),
                px(left - 8.0),
                px(yy + FONT * 0.35),
                escape(&t.label)
            );
        }
        if !self.y.title.is_empty() {
            let (tx, ty) = (12.0 + FONT, top + self.plot_height / 2.0);
            let _ = writeln!(
                out,
                r#"<text class="axis-title" text-anchor="middle" transform="translate({},{}) rotate(-90)">{}</text>"#,
                px(tx),
                px(ty),
                escape(&self.y.title)
            );
        }
        out.push_str("</g>\n");

        // Series, clipped to the plot.
        let _ = writeln!(out, r#"<g class="data" clip-path="url(#{})">"#, escape(&clip));
        for s in &self.series {
            draw_series(&mut out, s, &x_of, &y_of);
        }
        out.push_str("</g>\n");
        if empty {
            let _ = writeln!(
                out,
                r##"<text class="empty" x="{}" y="{}" text-anchor="middle" fill="#888">no data</text>"##,
                px(left + plot_w / 2.0),
                px(top + self.plot_height / 2.0)
            );
        }

        // Reference lines and marks over the data.
        for r in &self.rules {
            let yy = y_of(r.y);
            if !(top - 0.5..=bottom + 0.5).contains(&yy) {
                continue;
            }
            let _ = writeln!(
                out,
                r#"<g class="rule" data-label="{}"><line x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}" stroke-width="1.2"{}/><text x="{}" y="{}" text-anchor="end" fill="{}" paint-order="stroke" stroke="white" stroke-width="3">{}</text></g>"#,
                escape(&r.label),
                px(left),
                px(left + plot_w),
                px(yy),
                px(yy),
                escape(&r.color),
                dash_attr(r.dash.as_deref()),
                px(left + plot_w - 4.0),
                px(yy - 4.0),
                escape(&r.color),
                escape(&r.label)
            );
        }
        for m in &self.marks {
            let xx = x_of(m.x);
            let _ = writeln!(
                out,
                r#"<line class="mark" data-label="{}" x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}" stroke-width="1.5" stroke-dasharray="5,3"/>"#,
                escape(&m.label),
                px(xx),
                px(xx),
                px(top),
                px(bottom),
                escape(&m.color)
            );
        }
        let _ = writeln!(
            out,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
            px(left),
            px(top),
            px(plot_w),
            px(self.plot_height)
        );
        let height = bottom + 20.0 + 2.0 * FONT + if self.x.title.is_empty() { 0.0 } else { 6.0 };
        (out, height.ceil())
    }

    /// Writes the legend in rows from `y`; returns the y below it.
    fn legend(&self, out: &mut String, left: f64, right: f64, y: f64) -> f64 {
        let mut entries: Vec<(&str, Swatch<'_>)> =
            self.series.iter().map(|s| (s.name.as_str(), Swatch::Series(s))).collect();
        for s in &self.spans {
            if let Some(name) = &s.legend
                && !entries.iter().any(|(n, sw)| n == name && matches!(sw, Swatch::Span(_)))
            {
                entries.push((name, Swatch::Span(&s.color)));
            }
        }
        if entries.is_empty() {
            return y;
        }
        out.push_str("<g class=\"legend\">\n");
        let (mut x, mut row) = (left, 0usize);
        for (name, swatch) in entries {
            let width = 26.0 + text_width(name, FONT) + 18.0;
            if x + width > right && x > left {
                x = left;
                row += 1;
            }
            let cy = y + row as f64 * (FONT + 8.0) + FONT * 0.5;
            let _ = write!(out, r#"<g class="legend-item" data-series="{}">"#, escape(name));
            match swatch {
                Swatch::Series(s) => match s.kind {
                    Kind::Points => out.push_str(&shape(s.shape, x + 10.0, cy, 4.5, &s.color)),
                    _ => {
                        let _ = write!(
                            out,
                            r#"<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}" stroke-width="{}"{}/>"#,
                            px(x),
                            px(x + 20.0),
                            px(cy),
                            px(cy),
                            escape(&s.color),
                            if s.kind == Kind::Segments { s.width.max(3.0) } else { s.width.max(2.0) },
                            dash_attr(s.dash.as_deref())
                        );
                    }
                },
                Swatch::Span(color) => {
                    let _ = write!(
                        out,
                        r#"<rect x="{}" y="{}" width="20" height="12" fill="{}" fill-opacity="0.3"/>"#,
                        px(x),
                        px(cy - 6.0),
                        escape(color)
                    );
                }
            }
            let _ = writeln!(
                out,
                r##"<text x="{}" y="{}" fill="#222">{}</text></g>"##,
                px(x + 26.0),
                px(cy + FONT * 0.35),
                escape(name)
            );
            x += width;
        }
        out.push_str("</g>\n");
        y + (row + 1) as f64 * (FONT + 8.0) + 4.0
    }
}

enum Swatch<'a> {
    Series(&'a Series),
    Span(&'a str),
}

fn dash_attr(dash: Option<&str>) -> String {
    dash.map_or(String::new(), |d| format!(r#" stroke-dasharray="{}""#, escape(d)))
}

fn open_svg(out: &mut String, width: f64, height: f64, label: Option<&str>) {
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="{FONT_FAMILY}" font-size="{FONT}" role="img"{aria}>"#,
        w = px(width),
        h = px(height),
        aria = label.map_or(String::new(), |l| format!(r#" aria-label="{}""#, escape(l)))
    );
    out.push_str("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
}

/// A marker centred at (cx, cy) of radius `r`, as one element.
fn shape(shape: Shape, cx: f64, cy: f64, r: f64, color: &str) -> String {
    let c = escape(color);
    let poly = |pts: &[(f64, f64)]| {
        let p: Vec<String> = pts.iter().map(|&(dx, dy)| format!("{},{}", px(cx + dx), px(cy + dy))).collect();
        format!(r#"<polygon points="{}" fill="{c}"/>"#, p.join(" "))
    };
    match shape {
        Shape::Circle => format!(r#"<circle cx="{}" cy="{}" r="{}" fill="{c}"/>"#, px(cx), px(cy), px(r)),
        Shape::Square => {
            format!(
                r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{c}"/>"#,
                px(cx - r),
                px(cy - r),
                px(2.0 * r),
                px(2.0 * r)
            )
        }
        Shape::Diamond => poly(&[(0.0, -r * 1.3), (r * 1.3, 0.0), (0.0, r * 1.3), (-r * 1.3, 0.0)]),
        Shape::TriangleUp => poly(&[(0.0, -r * 1.3), (r * 1.2, r), (-r * 1.2, r)]),
        Shape::TriangleDown => poly(&[(0.0, r * 1.3), (r * 1.2, -r), (-r * 1.2, -r)]),
        Shape::Cross => format!(
            r#"<path d="M{},{}L{},{}M{},{}L{},{}" stroke="{c}" stroke-width="2"/>"#,
            px(cx - r),
            px(cy - r),
            px(cx + r),
            px(cy + r),
            px(cx - r),
            px(cy + r),
            px(cx + r),
            px(cy - r)
        ),
    }
}

/// Wraps an item's element in its link and tooltip.
fn with_extras(out: &mut String, item: &Item, element: &str) {
    if let Some(href) = &item.href {
        let _ = write!(out, r#"<a href="{}">"#, escape(href));
    }
    match &item.tip {
        // The tooltip goes inside the element: "<circle ...><title>..</title></circle>".
        Some(tip) => {
            let open = element.trim_end_matches("/>");
            let tag: String = open.trim_start_matches('<').chars().take_while(|c| c.is_ascii_alphabetic()).collect();
            let _ = write!(out, "{open}><title>{}</title></{tag}>", escape(tip));
        }
        None => out.push_str(element),
    }
    if item.href.is_some() {
        out.push_str("</a>");
    }
    out.push('\n');
}

fn draw_series(out: &mut String, s: &Series, x_of: &dyn Fn(f64) -> f64, y_of: &dyn Fn(f64) -> f64) {
    let kind = match s.kind {
        Kind::Line => "line",
        Kind::Step => "step",
        Kind::Points => "points",
        Kind::Segments => "segments",
    };
    let _ = writeln!(out, r#"<g class="series" data-series="{}" data-kind="{kind}">"#, escape(&s.name));
    let items = s.items.iter().filter(|i| i.finite());
    match s.kind {
        Kind::Line | Kind::Step => {
            let mut d = String::new();
            let mut last_y = None;
            for (n, item) in items.clone().enumerate() {
                let (xx, yy) = (x_of(item.x), y_of(item.y));
                match (n, s.kind, last_y) {
                    (0, _, _) => {
                        let _ = write!(d, "M{},{}", px(xx), px(yy));
                    }
                    (_, Kind::Step, Some(prev)) if prev != yy => {
                        let _ = write!(d, "H{}V{}", px(xx), px(yy));
                    }
                    (_, Kind::Step, _) => {
                        let _ = write!(d, "H{}", px(xx));
                    }
                    _ => {
                        let _ = write!(d, "L{},{}", px(xx), px(yy));
                    }
                }
                last_y = Some(yy);
            }
            if !d.is_empty() {
                let _ = writeln!(
                    out,
                    r#"<path d="{d}" fill="none" stroke="{}" stroke-width="{}" stroke-linejoin="round"{}/>"#,
                    escape(&s.color),
                    s.width,
                    dash_attr(s.dash.as_deref())
                );
            }
            // Tooltips and links of a line live on invisible hit targets.
            for item in items.filter(|i| i.tip.is_some() || i.href.is_some()) {
                let element = format!(
                    r#"<circle cx="{}" cy="{}" r="5" fill="transparent"/>"#,
                    px(x_of(item.x)),
                    px(y_of(item.y))
                );
                with_extras(out, item, &element);
            }
        }
        Kind::Points => {
            let r = 2.4 * s.width.max(0.5);
            for item in items {
                with_extras(out, item, &shape(s.shape, x_of(item.x), y_of(item.y), r, &s.color));
            }
        }
        Kind::Segments => {
            for item in items {
                let (a, b, yy) = (x_of(item.x), x_of(item.x1), y_of(item.y));
                // A segment shorter than a pixel still shows.
                let b = if (b - a).abs() < 2.0 { a + 2.0 } else { b };
                let element = format!(
                    r#"<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="{}" stroke-width="{}" stroke-linecap="butt"/>"#,
                    px(a),
                    px(b),
                    px(yy),
                    px(yy),
                    escape(&s.color),
                    s.width
                );
                with_extras(out, item, &element);
            }
        }
    }
    out.push_str("</g>\n");
}

/// Charts stacked into one SVG under a heading (panels sharing a story,
/// e.g. latency above throughput).
pub fn stack(title: &str, subtitle: Option<&str>, charts: &[Chart]) -> String {
    let width = charts.iter().map(|c| c.width).fold(600.0, f64::max);
    let mut body = String::new();
    let mut y = 10.0 + TITLE_FONT + 2.0;
    let _ = writeln!(
        body,
        r##"<text class="heading" x="16" y="{}" font-size="{}" font-weight="700" fill="#111">{}</text>"##,
        px(y),
        TITLE_FONT + 2.0,
        escape(title)
    );
    if let Some(sub) = subtitle {
        y += FONT + 8.0;
        let _ = writeln!(body, r##"<text class="subheading" x="16" y="{}" fill="#555">{}</text>"##, px(y), escape(sub));
    }
    y += 12.0;
    for chart in charts {
        let (inner, height) = chart.body();
        let _ = writeln!(
            body,
            r#"<svg class="panel" data-title="{}" x="0" y="{}" width="{}" height="{}">"#,
            escape(&chart.title),
            px(y),
            px(chart.width),
            px(height)
        );
        body.push_str(&inner);
        body.push_str("</svg>\n");
        y += height + 8.0;
    }
    let mut out = String::with_capacity(body.len() + 300);
    open_svg(&mut out, width, y.ceil(), Some(title));
    out.push_str(&body);
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Chart {
        Chart::new("Orders & <trades>")
            .subtitle("group G1 on 600000")
            .x(Axis::linear("run time").format(Format::Nanos).include_zero())
            .y(Axis::log("latency (log)").format(Format::Nanos))
            .series(Series::points("self-trade", palette::BLUE, [(1e9, 2e6), (2e9, 3e6)]))
            .series(Series::line("p50 per 100 ms", palette::GREY, [(0.0, 1e6), (1e9, 1.5e6), (2e9, 1.2e6)]).dash("6,3"))
            .series(Series::step("best bid", palette::GREEN, [(0.0, 1e6), (1e9, 2e6)]))
            .series(Series::new(
                Kind::Segments,
                "buy orders",
                palette::BLUE,
                [Item::segment(0.5e9, 1.5e9, 4e6).tip("seq 12 buy 100 @ 10.01").href("#seq-12")],
            ))
            .span(Span::new(0.0, 1e9, palette::GREY).label("warm-up"))
            .span(Span::new(1.2e9, 1.4e9, palette::ORANGE).legend("burst"))
            .span(Span::new(1.6e9, 1.7e9, palette::ORANGE).legend("burst"))
            .mark(1.3e9, "alert A-1", palette::RED)
            .rule(2.5e6, "p99 2.5 ms", palette::RED, Some("4,2"))
    }

    #[test]
    fn every_series_and_span_kind_is_in_the_legend_once() {
        let svg = sample().render();
        for name in ["self-trade", "p50 per 100 ms", "best bid", "buy orders"] {
            assert_eq!(svg.matches(&format!(r#"<g class="legend-item" data-series="{name}">"#)).count(), 1, "{name}");
            assert_eq!(svg.matches(&format!(r#"<g class="series" data-series="{name}""#)).count(), 1, "{name}");
        }
        assert_eq!(svg.matches(r#"<g class="legend-item" data-series="burst">"#).count(), 1);
        assert_eq!(svg.matches(r#"data-span="burst""#).count(), 2);
    }

    #[test]
    fn text_is_escaped_everywhere() {
        let chart = Chart::new("a <b> & \"c\"")
            .x(Axis::linear("x <units>"))
            .series(Series::points("<script>", palette::RED, [(1.0, 1.0)]))
            .span(Span::new(0.0, 1.0, palette::GREY).label("x&y"))
            .mark(0.5, "'quoted'", palette::RED);
        let svg = chart.render();
        assert!(!svg.contains("<script>") && !svg.contains("<b>") && !svg.contains("<units>"));
        assert!(svg.contains("a &lt;b&gt; &amp; &quot;c&quot;"));
        assert!(svg.contains("x&amp;y") && svg.contains("&#39;quoted&#39;"));
    }

    #[test]
    fn output_is_deterministic_and_well_formed() {
        let a = sample().render();
        assert_eq!(a, sample().render());
        assert!(a.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(a.trim_end().ends_with("</svg>"));
        for tag in ["g", "svg", "a", "text", "clipPath"] {
            let opened = a.matches(&format!("<{tag} ")).count() + a.matches(&format!("<{tag}>")).count();
            let closed = a.matches(&format!("</{tag}>")).count();
            assert_eq!(opened, closed, "<{tag}> opened {opened}, closed {closed}");
        }
        assert!(!a.contains("NaN") && !a.contains("inf"));
    }

    #[test]
    fn ticks_labels_links_and_tooltips_are_drawn() {
        let svg = sample().render();
        // Log latency axis: 1-2-5 ticks in ms; run time in seconds.
        for label in [">1 ms<", ">2 ms<", ">5 ms<", ">0<", ">1 s<", ">2 s<"] {
            assert!(svg.contains(label), "tick {label}");
        }
        assert!(svg.contains(r##"<a href="#seq-12"><line"##));
        assert!(svg.contains("<title>seq 12 buy 100 @ 10.01</title></line></a>"));
        assert!(svg.contains(r#"class="span-label""#) && svg.contains(">warm-up<") && svg.contains(">alert A-1<"));
        assert!(svg.contains(r#"data-label="p99 2.5 ms""#));
    }

    #[test]
    fn span_labels_sit_between_the_legend_and_the_plot() {
        let svg = sample().render();
        let attr = |from: &str, name: &str| -> f64 {
            let at = svg.find(from).unwrap_or_else(|| panic!("{from} missing"));
            let rest = &svg[at..];
            let v = rest.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
            rest[v..v + rest[v..].find('"').unwrap()].parse().unwrap()
        };
        let title_y = attr("class=\"title\"", "y");
        let label_y = attr("class=\"span-label\"", "y");
        let plot_y = attr("class=\"plot\"", "y");
        assert!(title_y < label_y && label_y < plot_y, "title {title_y}, span label {label_y}, plot top {plot_y}");
    }

    #[test]
    fn crowded_span_labels_take_lanes_and_give_up_past_the_limit() {
        let mut chart =
            Chart::new("bursts").x(Axis::linear("t")).series(Series::points("p", palette::BLUE, [(0.0, 0.0)]));
        for i in 0..20 {
            chart = chart.span(Span::new(i as f64, i as f64 + 0.5, palette::ORANGE).label(format!("burst number {i}")));
        }
        let svg = chart.render();
        let shown = svg.matches("class=\"span-label\"").count();
        assert!((MAX_LANES..20).contains(&shown), "{shown} labels shown");
        assert_eq!(svg.matches("data-span=").count(), 20, "every span is shaded");
    }

    /// `TAPEWATCH_CHART_SAMPLE=path cargo test --lib chart` writes the
    /// sample chart for a person to look at.
    #[test]
    fn sample_chart_for_a_person() {
        if let Some(path) = std::env::var_os("TAPEWATCH_CHART_SAMPLE") {
            std::fs::write(path, stack("sample", Some("two panels"), &[sample(), sample().id("second")])).unwrap();
        }
    }

    #[test]
    fn an_empty_chart_says_so() {
        let svg = Chart::new("nothing").x(Axis::linear("x")).y(Axis::log("y")).render();
        assert!(svg.contains(">no data<"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn stacked_panels_keep_their_own_clip_ids() {
        let a = Chart::new("latency").series(Series::line("l", palette::BLUE, [(0.0, 1.0), (1.0, 2.0)]));
        let b = Chart::new("throughput").series(Series::line("t", palette::GREEN, [(0.0, 1.0), (1.0, 2.0)]));
        let svg = stack("bench", Some("scenario x"), &[a, b]);
        assert_eq!(svg.matches("<svg class=\"panel\"").count(), 2);
        assert!(svg.contains("id=\"chart-latency-plot\"") && svg.contains("id=\"chart-throughput-plot\""));
    }
}
