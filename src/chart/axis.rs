//! Axes: the map from data values to pixels and the ticks a person reads.
//!
//! Ticks fall on "nice" values: 1, 2 and 5 times a power of ten on linear
//! and log axes, whole clock steps (1 s, 15 s, 5 min, ...) on event-time
//! axes, aligned in the trading day's zone so that 09:30:00 is a tick.

/// How values map to positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    Linear,
    /// Log10; values at or below zero are drawn on the axis floor.
    Log,
}

/// How tick labels are written.
#[derive(Clone, Debug, PartialEq)]
pub enum Format {
    /// A number with a k/M/G prefix, then `unit` (e.g. "/s"; may be empty).
    Number { unit: String },
    /// A duration given in nanoseconds, written in ns, µs, ms or s.
    Nanos,
    /// Event time (nanoseconds since the epoch) as a time of day
    /// `HH:MM:SS` (`HH:MM:SS.fff` when ticks are under a second apart), in
    /// a zone `offset_ns` east of UTC.
    Clock { offset_ns: i64 },
}

/// One tick: a gridline at `value`, labelled when `major`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tick {
    pub value: f64,
    pub label: String,
    pub major: bool,
}

/// An axis: its title (with the unit, e.g. "latency (log)"), scale, label
/// format, and an optional fixed range (otherwise the data's, widened to
/// whole ticks on linear and log axes).
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    pub title: String,
    pub scale: Scale,
    pub format: Format,
    pub range: Option<(f64, f64)>,
    /// A linear auto-ranged axis reaches down (or up) to zero.
    pub zero: bool,
}

impl Axis {
    pub fn linear(title: &str) -> Axis {
        Axis { title: title.to_string(), scale: Scale::Linear, format: Format::number(""), range: None, zero: false }
    }

    pub fn log(title: &str) -> Axis {
        Axis { scale: Scale::Log, ..Axis::linear(title) }
    }

    /// A linear event-time axis labelled with the time of day in a zone
    /// `offset_ns` east of UTC (`crate::detect::state::episode::ZONE_OFFSET_NS`
    /// for the trading day's).
    pub fn clock(title: &str, offset_ns: i64) -> Axis {
        Axis { format: Format::Clock { offset_ns }, ..Axis::linear(title) }
    }

    pub fn format(mut self, format: Format) -> Axis {
        self.format = format;
        self
    }

    pub fn range(mut self, lo: f64, hi: f64) -> Axis {
        self.range = Some((lo, hi));
        self
    }

    pub fn include_zero(mut self) -> Axis {
        self.zero = true;
        self
    }

    /// The domain drawn for data spanning `lo..=hi` (either may be
    /// non-finite when there is no data) and its ticks, about `target` of
    /// them.
    pub fn layout(&self, lo: f64, hi: f64, target: usize) -> ((f64, f64), Vec<Tick>) {
        let target = target.max(2);
        let fixed = self.range.filter(|&(a, b)| a.is_finite() && b.is_finite() && a < b);
        let domain = match (fixed, self.scale) {
            (Some((a, b)), Scale::Log) if a > 0.0 => (a, b),
            (Some(r), Scale::Linear) => r,
            _ => self.auto_domain(lo, hi, target),
        };
        let ticks = match (&self.format, self.scale) {
            (_, Scale::Log) => log_ticks(domain, &self.format),
            (Format::Clock { offset_ns }, Scale::Linear) => clock_ticks(domain, *offset_ns, target),
            (format, Scale::Linear) => linear_ticks(domain, format, target),
        };
        (domain, ticks)
    }

    fn auto_domain(&self, lo: f64, hi: f64, target: usize) -> (f64, f64) {
        match self.scale {
            Scale::Log => {
                let (lo, hi) = if lo.is_finite() && hi.is_finite() && hi > 0.0 {
                    (if lo > 0.0 { lo } else { hi / 10.0 }, hi)
                } else {
                    (1.0, 10.0)
                };
                let (lo, hi) = if lo == hi { (lo / 2.0, hi * 2.0) } else { (lo, hi) };
                let decades = hi.log10().ceil() - lo.log10().floor();
                let steps: &[f64] = if decades <= 3.0 { &[1.0, 2.0, 5.0] } else { &[1.0] };
                (nice_below(lo, steps), nice_above(hi, steps))
            }
            Scale::Linear => {
                let (mut lo, mut hi) = if lo.is_finite() && hi.is_finite() { (lo, hi) } else { (0.0, 1.0) };
                if self.zero {
                    lo = lo.min(0.0);
                    hi = hi.max(0.0);
                }
                if lo == hi {
                    let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
                    lo -= pad;
                    hi += pad;
                }
                if matches!(self.format, Format::Clock { .. }) {
                    return (lo, hi);
                }
                let step = nice_step(hi - lo, target);
                ((lo / step).floor() * step, (hi / step).ceil() * step)
            }
        }
    }

    /// The position of `v` between `a` (at the domain's low end) and `b`.
    pub fn map(&self, v: f64, domain: (f64, f64), a: f64, b: f64) -> f64 {
        let t = match self.scale {
            Scale::Linear => (v - domain.0) / (domain.1 - domain.0),
            Scale::Log if v <= 0.0 => 0.0,
            Scale::Log => (v.log10() - domain.0.log10()) / (domain.1.log10() - domain.0.log10()),
        };
        a + t * (b - a)
    }
}

impl Format {
    pub fn number(unit: &str) -> Format {
        Format::Number { unit: unit.to_string() }
    }

    /// A value written for a reader (a legend entry, a reference line),
    /// outside any tick sequence.
    pub fn label(&self, v: f64) -> String {
        match self {
            Format::Number { unit } => format!("{}{unit}", si(v, significant_step(v))),
            Format::Nanos => nanos(v),
            Format::Clock { offset_ns } => clock(v as i64, *offset_ns, 1),
        }
    }
}

/// The 1-2-5 step that puts about `target` ticks over `span`.
pub fn nice_step(span: f64, target: usize) -> f64 {
    let raw = (span / target.max(1) as f64).abs();
    if raw == 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let m = match raw / magnitude {
        n if n <= 1.0 => 1.0,
        n if n <= 2.0 => 2.0,
        n if n <= 5.0 => 5.0,
        _ => 10.0,
    };
    m * magnitude
}

/// The largest `m × 10^k` (m in `steps`) at or below `v > 0`.
fn nice_below(v: f64, steps: &[f64]) -> f64 {
    let k = v.log10().floor();
    let decade = 10f64.powf(k);
    steps.iter().rev().map(|m| m * decade).find(|&c| c <= v * (1.0 + 1e-9)).unwrap_or(decade)
}

/// The smallest `m × 10^k` (m in `steps`, or 10) at or above `v > 0`.
fn nice_above(v: f64, steps: &[f64]) -> f64 {
    let k = v.log10().floor();
    let decade = 10f64.powf(k);
    steps.iter().map(|m| m * decade).find(|&c| c >= v * (1.0 - 1e-9)).unwrap_or(decade * 10.0)
}

fn linear_ticks(domain: (f64, f64), format: &Format, target: usize) -> Vec<Tick> {
    let step = nice_step(domain.1 - domain.0, target);
    let first = (domain.0 / step - 1e-9).ceil() as i64;
    let last = (domain.1 / step + 1e-9).floor() as i64;
    (first..=last)
        .map(|k| {
            // k * step, not a running sum: no drift, and 0 is exactly 0.
            let value = k as f64 * step;
            let label = match format {
                Format::Number { unit } => format!("{}{unit}", si(value, step)),
                Format::Nanos => nanos(value),
                Format::Clock { offset_ns } => clock(value as i64, *offset_ns, step as i64),
            };
            Tick { value, label, major: true }
        })
        .collect()
}

fn log_ticks(domain: (f64, f64), format: &Format) -> Vec<Tick> {
    let (lo, hi) = domain;
    let k0 = lo.log10().floor() as i32;
    let k1 = hi.log10().ceil() as i32;
    // Up to three decades every 1-2-5 is labelled; beyond that only the
    // powers of ten are, and 2..9 get unlabelled gridlines.
    let labelled: &[f64] = if k1 - k0 <= 3 { &[1.0, 2.0, 5.0] } else { &[1.0] };
    let mut out = Vec::new();
    for k in k0..=k1 {
        for m in 1..10 {
            let value = m as f64 * 10f64.powi(k);
            if value < lo * (1.0 - 1e-9) || value > hi * (1.0 + 1e-9) {
                continue;
            }
            let major = labelled.contains(&(m as f64));
            if !major && labelled.len() == 3 {
                continue;
            }
            let label = if !major {
                String::new()
            } else {
                match format {
                    Format::Number { unit } => format!("{}{unit}", si(value, value)),
                    Format::Nanos => nanos(value),
                    Format::Clock { offset_ns } => clock(value as i64, *offset_ns, 1),
                }
            };
            out.push(Tick { value, label, major });
        }
    }
    out
}

/// Clock steps in nanoseconds: sub-second 1-2-5, then the steps a clock face has.
const CLOCK_STEPS_NS: &[i64] = &[
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
    15_000_000_000,
    30_000_000_000,
    60_000_000_000,
    120_000_000_000,
    300_000_000_000,
    600_000_000_000,
    900_000_000_000,
    1_800_000_000_000,
    3_600_000_000_000,
    7_200_000_000_000,
    10_800_000_000_000,
    21_600_000_000_000,
    43_200_000_000_000,
];

fn clock_ticks(domain: (f64, f64), offset_ns: i64, target: usize) -> Vec<Tick> {
    let (lo, hi) = (domain.0 as i64, domain.1 as i64);
    let want = (hi - lo) / target as i64;
    let step = CLOCK_STEPS_NS.iter().copied().find(|&s| s >= want).unwrap_or(CLOCK_STEPS_NS[CLOCK_STEPS_NS.len() - 1]);
    // Align in local time: the zone offset is whole hours, so local
    // multiples of the step are whole clock values.
    let first = (lo + offset_ns).div_euclid(step) * step - offset_ns;
    let first = if first < lo { first + step } else { first };
    let mut out = Vec::new();
    let mut t = first;
    while t <= hi {
        out.push(Tick { value: t as f64, label: clock(t, offset_ns, step), major: true });
        t += step;
    }
    out
}

/// `HH:MM:SS`, with milliseconds when `step_ns` is under a second.
fn clock(ts_ns: i64, offset_ns: i64, step_ns: i64) -> String {
    const DAY: i64 = 86_400 * 1_000_000_000;
    let of_day = (ts_ns + offset_ns).rem_euclid(DAY);
    let s = of_day / 1_000_000_000;
    let hms = format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    if step_ns < 1_000_000_000 { format!("{hms}.{:03}", of_day % 1_000_000_000 / 1_000_000) } else { hms }
}

/// A step as fine as `v`'s first significant digits (for lone values).
fn significant_step(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() { 1.0 } else { 10f64.powf(v.abs().log10().floor() - 2.0) }
}

/// `v` with a k/M/G prefix and as many decimals as `step` needs.
fn si(v: f64, step: f64) -> String {
    let a = v.abs();
    if a < step.abs() * 1e-9 {
        return "0".to_string();
    }
    let (div, prefix) = match a {
        a if a >= 1e9 => (1e9, "G"),
        a if a >= 1e6 => (1e6, "M"),
        a if a >= 1e3 => (1e3, "k"),
        _ => (1.0, ""),
    };
    let scaled_step = step.abs() / div;
    let decimals =
        if scaled_step >= 1.0 || scaled_step == 0.0 { 0 } else { ((-scaled_step.log10()).ceil() as usize).min(9) };
    let text = trim(format!("{:.*}", decimals, v / div));
    if text == "-0" { "0".to_string() } else { format!("{text}{prefix}") }
}

/// A duration in the largest unit where it is at least 1.
pub fn nanos(v: f64) -> String {
    let a = v.abs();
    let (div, unit) = match a {
        a if a >= 1e9 => (1e9, "s"),
        a if a >= 1e6 => (1e6, "ms"),
        a if a >= 1e3 => (1e3, "µs"),
        _ => (1.0, "ns"),
    };
    if a == 0.0 {
        return "0".to_string();
    }
    format!("{} {unit}", trim(format!("{:.3}", v / div)))
}

fn trim(mut s: String) -> String {
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(ticks: &[Tick]) -> Vec<&str> {
        ticks.iter().filter(|t| t.major).map(|t| t.label.as_str()).collect()
    }

    #[test]
    fn nice_steps_are_one_two_five() {
        for (span, target, step) in
            [(10.0, 5, 2.0), (1.0, 5, 0.2), (7.3, 5, 2.0), (950.0, 6, 200.0), (3e6, 6, 5e5), (0.03, 3, 0.01)]
        {
            let got = nice_step(span, target);
            assert!((got - step).abs() < step * 1e-9, "span {span} target {target}: {got}, want {step}");
        }
    }

    #[test]
    fn linear_ticks_cover_the_data_on_round_values() {
        let axis = Axis::linear("records/s").format(Format::number("/s")).include_zero();
        let (domain, ticks) = axis.layout(120_000.0, 2_700_000.0, 6);
        assert_eq!(domain, (0.0, 3_000_000.0));
        assert_eq!(labels(&ticks), ["0/s", "500k/s", "1M/s", "1.5M/s", "2M/s", "2.5M/s", "3M/s"]);
        let (domain, ticks) = Axis::linear("x").layout(-0.26, 0.91, 5);
        assert_eq!(domain, (-0.5, 1.0));
        assert_eq!(labels(&ticks), ["-0.5", "0", "0.5", "1"]);
    }

    #[test]
    fn a_fixed_range_is_kept_and_ticked_inside() {
        let (domain, ticks) = Axis::linear("q").range(3.0, 17.0).layout(0.0, 100.0, 5);
        assert_eq!(domain, (3.0, 17.0));
        assert_eq!(labels(&ticks), ["5", "10", "15"]);
    }

    #[test]
    fn flat_and_empty_data_still_get_an_axis() {
        let (domain, ticks) = Axis::linear("y").layout(5.0, 5.0, 5);
        assert!(domain.0 < 5.0 && domain.1 > 5.0, "{domain:?}");
        assert!(ticks.len() >= 2);
        let (domain, _) = Axis::linear("y").layout(f64::INFINITY, f64::NEG_INFINITY, 5);
        assert_eq!(domain, (0.0, 1.0));
        let (domain, ticks) = Axis::log("y").layout(f64::INFINITY, f64::NEG_INFINITY, 5);
        assert_eq!(domain, (1.0, 10.0));
        assert!(!ticks.is_empty());
    }

    #[test]
    fn log_latency_ticks_are_one_two_five_in_time_units() {
        // p50 1.4 ms and a max of 40 ms: the 1-2-5 ticks of each decade.
        let axis = Axis::log("latency").format(Format::Nanos);
        let (domain, ticks) = axis.layout(1_400_000.0, 40_000_000.0, 5);
        assert_eq!(domain, (1e6, 5e7));
        assert_eq!(labels(&ticks), ["1 ms", "2 ms", "5 ms", "10 ms", "20 ms", "50 ms"]);
        // p50 and p99 do not sit on the floor: they are a fifth of the way apart.
        let p50 = axis.map(1_400_000.0, domain, 0.0, 100.0);
        let p99 = axis.map(8_000_000.0, domain, 0.0, 100.0);
        assert!(p50 > 5.0 && p99 - p50 > 40.0, "p50 at {p50}, p99 at {p99}");
    }

    #[test]
    fn wide_log_ranges_label_decades_and_grid_the_rest() {
        let axis = Axis::log("latency").format(Format::Nanos);
        let (domain, ticks) = axis.layout(800.0, 3e9, 5);
        assert_eq!(domain, (100.0, 1e10));
        assert_eq!(labels(&ticks), ["100 ns", "1 µs", "10 µs", "100 µs", "1 ms", "10 ms", "100 ms", "1 s", "10 s"]);
        assert!(ticks.iter().any(|t| !t.major && t.label.is_empty() && t.value == 500.0));
        // Zero and below go to the floor instead of NaN.
        assert_eq!(axis.map(0.0, domain, 10.0, 90.0), 10.0);
    }

    #[test]
    fn clock_ticks_are_whole_clock_steps_in_the_trading_zone() {
        const OFFSET: i64 = 8 * 3_600_000_000_000;
        // 2026-11-02 09:31:07.250 to 09:41:52 in +08:00.
        let midnight = 1_793_548_800_000_000_000i64;
        let at = |h: i64, m: i64, s: i64, ms: i64| {
            (midnight + ((h * 60 + m) * 60 + s) * 1_000_000_000 + ms * 1_000_000) as f64
        };
        let axis = Axis::clock("event time (+08:00)", OFFSET);
        let (domain, ticks) = axis.layout(at(9, 31, 7, 250), at(9, 41, 52, 0), 6);
        assert_eq!(domain, (at(9, 31, 7, 250), at(9, 41, 52, 0)), "clock axes keep the data's range");
        assert_eq!(labels(&ticks), ["09:32:00", "09:34:00", "09:36:00", "09:38:00", "09:40:00"]);
        // Under a second apart: milliseconds.
        let (_, ticks) = axis.layout(at(14, 59, 59, 900), at(15, 0, 0, 300), 4);
        assert_eq!(labels(&ticks), ["14:59:59.900", "15:00:00.000", "15:00:00.100", "15:00:00.200", "15:00:00.300"]);
    }

    #[test]
    fn lone_values_are_written_with_their_units() {
        assert_eq!(Format::Nanos.label(1_412_000.0), "1.412 ms");
        assert_eq!(Format::Nanos.label(750.0), "750 ns");
        assert_eq!(Format::Nanos.label(2_500_000_000.0), "2.5 s");
        assert_eq!(Format::number("/s").label(1_234_567.0), "1.23M/s");
        assert_eq!(Format::number("").label(0.0), "0");
    }
}
