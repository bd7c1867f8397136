//! `raftkv bench --svg FILE`: the run as a picture — throughput over time (failures
//! in red), and the latency histogram on a log scale with its p50 and p99 marked. The
//! SVG is written directly: two charts need no plotting library.
use std::fmt::Write;

use hdrhistogram::Histogram;

/// One second of the run: when it ended (seconds from the start), what succeeded and
/// what failed in it.
#[derive(Clone, Copy, Debug)]
pub struct Second {
    pub t: f64,
    pub ok: u64,
    pub failed: u64,
}

const W: f64 = 960.0;
const H: f64 = 700.0;
/// Each chart's plot area: left, top, width, height.
const TOP: (f64, f64, f64, f64) = (80.0, 70.0, 840.0, 230.0);
const BOTTOM: (f64, f64, f64, f64) = (80.0, 400.0, 840.0, 230.0);
/// Latency buckets, log-spaced between the fastest and the slowest request.
const BUCKETS: usize = 48;

/// A round step for about `n` ticks up to `max`.
fn step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag)
}

fn num(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 1.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The SVG of a run titled `title`.
pub fn render(title: &str, seconds: &[Second], hist: &Histogram<u64>) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="system-ui, sans-serif" font-size="13">
<rect width="{W}" height="{H}" fill="#fff"/>
<text x="{x}" y="30" font-size="17" font-weight="600">{t}</text>
"##,
        x = TOP.0,
        t = esc(title)
    );
    throughput(&mut s, seconds);
    latency(&mut s, hist);
    s.push_str("</svg>\n");
    s
}

fn axes(s: &mut String, (x, y, w, h): (f64, f64, f64, f64), title: &str, x_label: &str) {
    let _ = writeln!(
        s,
        r##"<text x="{x}" y="{ty}" font-weight="600">{title}</text>
<line x1="{x}" y1="{yb}" x2="{xr}" y2="{yb}" stroke="#333"/>
<line x1="{x}" y1="{y}" x2="{x}" y2="{yb}" stroke="#333"/>
<text x="{xm}" y="{yl}" text-anchor="middle" fill="#555">{x_label}</text>"##,
        ty = y - 14.0,
        yb = y + h,
        xr = x + w,
        xm = x + w / 2.0,
        yl = y + h + 38.0,
    );
}

/// Grid lines and labels of a panel's y axis, up to a round value at or above `peak`;
/// returns that value (the top of the axis).
fn y_grid(s: &mut String, (x0, y0, w, h): (f64, f64, f64, f64), peak: f64) -> f64 {
    // Counts: whole steps.
    let y_step = step(peak, 5.0).max(1.0);
    let y_max = (peak / y_step).ceil() * y_step;
    let py = |v: f64| y0 + h - v / y_max * h;
    for i in 0..=(y_max / y_step).round() as u64 {
        let v = i as f64 * y_step;
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#e5e7eb"/><text x="{xl}" y="{yt}" text-anchor="end" fill="#555">{label}</text>"##,
            y = py(v),
            x1 = x0 + w,
            xl = x0 - 8.0,
            yt = py(v) + 4.0,
            label = num(v)
        );
    }
    y_max
}

fn throughput(s: &mut String, seconds: &[Second]) {
    let (x0, y0, w, h) = TOP;
    axes(s, TOP, "Throughput (requests/s, each second; failures in red)", "seconds since the start");
    let t_max = seconds.last().map_or(1.0, |l| l.t).max(1.0);
    // Per second, whatever each sample's length; a last sample shorter than half a
    // second (the run ended just after a tick) is folded into the one before.
    let mut merged: Vec<Second> = Vec::with_capacity(seconds.len());
    for &p in seconds {
        match merged.last_mut() {
            Some(last) if p.t - last.t < 0.5 => {
                *last = Second { t: p.t, ok: last.ok + p.ok, failed: last.failed + p.failed }
            }
            _ => merged.push(p),
        }
    }
    let seconds = &merged[..];
    let rates: Vec<(f64, f64, f64)> = seconds
        .iter()
        .scan(0.0, |prev, p| {
            let dt = (p.t - *prev).max(0.05);
            *prev = p.t;
            Some((p.t, p.ok as f64 / dt, p.failed as f64 / dt))
        })
        .collect();
    let peak = rates.iter().map(|&(_, ok, failed)| ok.max(failed)).fold(1.0, f64::max);
    let y_max = y_grid(s, TOP, peak);
    let px = |t: f64| x0 + t / t_max * w;
    let py = |v: f64| y0 + h - v / y_max * h;
    let t_step = step(t_max, 10.0).max(1.0);
    for i in 0..=(t_max / t_step).floor() as u64 {
        let t = i as f64 * t_step;
        let _ = writeln!(
            s,
            r##"<text x="{x}" y="{y}" text-anchor="middle" fill="#555">{label}</text>"##,
            x = px(t),
            y = y0 + h + 18.0,
            label = num(t)
        );
    }
    let bar = (w / t_max).max(1.0) * 0.6;
    for (p, &(t, _, failed)) in seconds.iter().zip(&rates).filter(|(p, _)| p.failed > 0) {
        let _ = writeln!(
            s,
            r##"<rect class="failed" x="{x}" y="{y}" width="{bar}" height="{hh}" fill="#dc2626" opacity="0.8"><title>{f} failed in the second ending at {t:.0} s</title></rect>"##,
            x = px(t) - bar / 2.0,
            y = py(failed),
            hh = h - (py(failed) - y0),
            f = p.failed,
        );
    }
    let points: Vec<String> = rates.iter().map(|&(t, ok, _)| format!("{:.1},{:.1}", px(t), py(ok))).collect();
    let _ = writeln!(
        s,
        r##"<polyline class="throughput" points="{}" fill="none" stroke="#2563eb" stroke-width="2"/>"##,
        points.join(" ")
    );
}

fn latency(s: &mut String, hist: &Histogram<u64>) {
    let (x0, y0, w, h) = BOTTOM;
    axes(s, BOTTOM, "Latency (requests per bucket; log scale)", "milliseconds");
    if hist.is_empty() {
        return;
    }
    // Microseconds, log-spaced, padded a little either side.
    let lo = (hist.min().max(1) as f64 * 0.9).ln();
    let hi = (hist.max().max(2) as f64 * 1.1).ln();
    let bucket_of = |us: u64| ((((us.max(1) as f64).ln() - lo) / (hi - lo) * BUCKETS as f64) as usize).min(BUCKETS - 1);
    let mut counts = [0u64; BUCKETS];
    for v in hist.iter_recorded() {
        counts[bucket_of(v.value_iterated_to())] += v.count_at_value();
    }
    let peak = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let y_max = y_grid(s, BOTTOM, peak);
    let px = |us: f64| x0 + (us.max(1.0).ln() - lo) / (hi - lo) * w;
    let py = |v: f64| y0 + h - v / y_max * h;
    // Ticks at 1, 2, 5 × powers of ten milliseconds within the range.
    for exp in -3..=5 {
        for m in [1.0, 2.0, 5.0] {
            let ms = m * 10f64.powi(exp);
            let us = ms * 1000.0;
            if us.ln() < lo || us.ln() > hi {
                continue;
            }
            let label = if ms < 1.0 { format!("{ms}") } else { num(ms) };
            let _ = writeln!(
                s,
                r##"<text x="{x}" y="{y}" text-anchor="middle" fill="#555">{label}</text>"##,
                x = px(us),
                y = y0 + h + 18.0
            );
        }
    }
    let bw = w / BUCKETS as f64;
    for (i, &c) in counts.iter().enumerate().filter(|(_, c)| **c > 0) {
        let from = (lo + (hi - lo) * i as f64 / BUCKETS as f64).exp() / 1000.0;
        let to = (lo + (hi - lo) * (i + 1) as f64 / BUCKETS as f64).exp() / 1000.0;
        let _ = writeln!(
            s,
            r##"<rect class="bucket" data-count="{c}" x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{hh:.1}" fill="#60a5fa" stroke="#fff"><title>{c} requests took {from:.3} to {to:.3} ms</title></rect>"##,
            x = x0 + bw * i as f64,
            y = py(c as f64),
            bw = bw,
            hh = h - (py(c as f64) - y0),
        );
    }
    for (q, name, color) in [(0.5, "p50", "#16a34a"), (0.99, "p99", "#dc2626")] {
        let us = hist.value_at_quantile(q) as f64;
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{y0}" x2="{x}" y2="{yb}" stroke="{color}" stroke-dasharray="5 4" stroke-width="2"/><text x="{xt}" y="{yt}" fill="{color}" font-weight="600">{name} {ms:.2} ms</text>"##,
            x = px(us),
            yb = y0 + h,
            xt = px(us) + 5.0,
            yt = y0 + if q < 0.9 { 14.0 } else { 32.0 },
            ms = us / 1000.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_svg_draws_every_second_and_every_request() {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for us in [300u64, 450, 450, 900, 1_200, 5_000, 40_000] {
            hist.record(us).unwrap();
        }
        let seconds = [
            Second { t: 1.0, ok: 1200, failed: 0 },
            Second { t: 2.0, ok: 0, failed: 35 },
            Second { t: 3.0, ok: 1500, failed: 0 },
            // The run's end, just after the last tick: folded into the second before.
            Second { t: 3.01, ok: 20, failed: 0 },
        ];
        let svg = render("a <test> run", &seconds, &hist);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;test&gt; run"), "the title is escaped");
        let line = svg.lines().find(|l| l.contains(r#"class="throughput""#)).unwrap();
        assert_eq!(line.split("points=\"").nth(1).unwrap().split('"').next().unwrap().split(' ').count(), 3);
        assert_eq!(svg.matches(r#"class="failed""#).count(), 1, "one second had failures");
        let drawn: u64 = svg
            .split(r#"data-count=""#)
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(drawn, 7, "every request is in a bucket");
        assert!(svg.contains("p50 0.90 ms"), "{svg}");
    }
}
