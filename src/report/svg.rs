//! A small line-chart writer: axes with ticks, one polyline per series, a legend.

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Dashed lines for secondary series (validation curves, fits).
    pub dashed: bool,
}

pub(super) const PALETTE: &[&str] = &["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

pub(super) fn esc(s: &str) -> String {
    super::html::esc(s)
}

/// Round tick values covering `lo..=hi`, about `n` of them (never more than 2n + 2, whatever
/// the numbers: a flat, huge or non-finite range gets a bounded list).
pub(super) fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi < lo {
        return vec![];
    }
    let span = (hi - lo).max(lo.abs().max(hi.abs()) * 1e-12).max(1e-300);
    let raw = span / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| span / s <= n as f64).unwrap_or(10.0 * mag);
    // Counted in whole steps: adding a step to a large value may not change it.
    let (first, last) = ((lo / step - 1e-9).ceil(), (hi / step + 1e-9).floor());
    if !(first.is_finite() && last.is_finite()) || last - first > (2 * n + 2) as f64 {
        return vec![];
    }
    (0..=(last - first) as i64).map(|k| (first + k as f64) * step).collect()
}

/// Tick labels with as many digits as the step needs, so neighbouring ticks never print alike
/// (`0.00098, 0.001, 0.00102` rather than `0.001, 0.001, 1.0e-3`), in one notation per axis.
pub(super) fn labels(ticks: &[f64]) -> Vec<String> {
    let step = if ticks.len() >= 2 { ticks[1] - ticks[0] } else { ticks.first().map_or(1.0, |t| t.abs().max(1e-300)) };
    let step_mag = step.abs().log10().floor();
    let largest = ticks.iter().fold(0.0f64, |m, t| m.max(t.abs()));
    let scientific = !(1e-3..1e5).contains(&largest);
    ticks
        .iter()
        .map(|&v| {
            if v.abs() < step.abs() * 1e-6 {
                return "0".into();
            }
            if scientific {
                let digits = (v.abs().log10().floor() - step_mag).clamp(0.0, 6.0) as usize;
                let s = format!("{v:.digits$e}");
                // `1.50e-3` → `1.5e-3`
                match s.split_once('e') {
                    Some((m, e)) if m.contains('.') => format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.')),
                    _ => s,
                }
            } else {
                let decimals = (-step_mag).clamp(0.0, 9.0) as usize;
                let s = format!("{v:.decimals$}");
                if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
            }
        })
        .collect()
}

/// The label of a log-axis tick at log10 value `t`: `1e5`, `3.2e4`.
fn label_pow(t: f64) -> String {
    format!("{:.1e}", 10f64.powf(t)).replace(".0e", "e")
}

/// A line chart; `log_x` plots the x axis in log10.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series], log_x: bool) -> String {
    chart(title, x_label, y_label, series, log_x, false)
}

/// A line chart with either axis in log10.
pub fn chart(title: &str, x_label: &str, y_label: &str, series: &[Series], log_x: bool, log_y: bool) -> String {
    // The legend's column widens for long names (a sweep's points), so no name is cut off;
    // about 7 px a character at the 12 px font.
    let longest = series.iter().map(|s| s.name.chars().count()).max().unwrap_or(0).min(60) as f64;
    let mr = (50.0 + 7.0 * longest).max(170.0);
    let (w, h) = (550.0 + mr, 420.0);
    let (ml, mt, mb) = (70.0, 40.0, 50.0);
    let tx = |x: f64| if log_x { x.max(1e-300).log10() } else { x };
    let ty = |y: f64| if log_y { y.max(1e-300).log10() } else { y };
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().map(|&(x, y)| (tx(x), ty(y)))).filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if pts.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    // A flat series (a constant learning rate) still gets an axis around its value.
    if x1 - x0 <= x0.abs().max(x1.abs()) * 1e-9 {
        (x0, x1) = (x0 - 0.5 * x0.abs().max(1.0), x1 + 0.5 * x1.abs().max(1.0));
    }
    let flat = y1 - y0 <= y0.abs().max(y1.abs()) * 1e-9;
    // (A flat series at zero gets ±1: a share or a count that stayed 0.)
    let pad = if flat { if y0 == 0.0 { 1.0 } else { y0.abs() * 0.05 } } else { (y1 - y0) * 0.05 };
    (y0, y1) = (y0 - pad, y1 + pad);
    let px = |x: f64| ml + (x - x0) / (x1 - x0) * (w - ml - mr);
    let py = |y: f64| h - mb - (y - y0) / (y1 - y0) * (h - mt - mb);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        (w - mr + ml) / 2.0,
        esc(title)
    );
    let yt = ticks(y0, y1, 6);
    for (&t, plain) in yt.iter().zip(labels(&yt)) {
        let y = py(t);
        let shown = if log_y { label_pow(t) } else { plain };
        s += &format!("<line x1=\"{ml}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n", w - mr, ml - 6.0, y + 4.0, shown);
    }
    let xt = ticks(x0, x1, 7);
    for (&t, plain) in xt.iter().zip(labels(&xt)) {
        let x = px(t);
        let shown = if log_x { label_pow(t) } else { plain };
        s += &format!("<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{mt}\" y2=\"{}\" stroke=\"#eee\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", h - mb, h - mb + 16.0, shown);
    }
    s += &format!("<rect x=\"{ml}\" y=\"{mt}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#333\"/>\n", w - ml - mr, h - mt - mb);
    s += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", (w - mr + ml) / 2.0, h - 10.0, esc(x_label));
    s += &format!("<text transform=\"translate(16,{}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n", (h - mb + mt) / 2.0, esc(y_label));
    for (i, se) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let path: Vec<String> = se.points.iter().map(|&(x, y)| (tx(x), ty(y))).filter(|(x, y)| x.is_finite() && y.is_finite()).map(|(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let dash = if se.dashed { " stroke-dasharray=\"6 4\"" } else { "" };
        if path.len() == 1 {
            let (x, y) = path[0].split_once(',').unwrap_or(("0", "0"));
            s += &format!("<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{color}\"/>\n");
        } else {
            s += &format!("<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\"{dash} points=\"{}\"/>\n", path.join(" "));
        }
        if se.name.is_empty() {
            continue; // unnamed series (extra markers) get no legend entry
        }
        let ly = mt + 14.0 + 18.0 * i.min(17) as f64;
        s += &format!(
            "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/><text x=\"{}\" y=\"{}\">{}</text>\n",
            w - mr + 12.0,
            w - mr + 36.0,
            w - mr + 42.0,
            ly + 4.0,
            esc(&se.name)
        );
    }
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        // span 4.15: a step of 0.5 would give 8 ticks (> 6), so the step is 1.
        assert_eq!(ticks(1.37, 5.52, 6), vec![2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn flat_huge_and_broken_ranges_end() {
        // A constant series at 1e6 once looped forever (1e6 + 1e-12 == 1e6).
        assert!(ticks(1e6, 1e6, 6).len() <= 14);
        assert!(ticks(1e300, 1.0000001e300, 6).len() <= 14);
        assert_eq!(ticks(f64::NAN, 1.0, 6), Vec::<f64>::new());
        assert_eq!(ticks(0.0, f64::INFINITY, 6), Vec::<f64>::new());
        // A flat learning rate, padded by 5% as the chart does: distinct labels.
        assert_eq!(labels(&ticks(0.00095, 0.00105, 6)), ["0.00096", "0.00098", "0.001", "0.00102", "0.00104"]);
        assert_eq!(labels(&ticks(2.5, 3.5, 6)), ["2.6", "2.8", "3", "3.2", "3.4"]);
        assert_eq!(labels(&ticks(0.0, 2e6, 5)), ["0", "5e5", "1e6", "1.5e6", "2e6"]);
        assert_eq!(labels(&ticks(2e-5, 6e-5, 5)), ["2e-5", "3e-5", "4e-5", "5e-5", "6e-5"]);
    }

    #[test]
    fn a_constant_series_draws_a_labelled_axis() {
        let s = line_chart("lr", "step", "lr", &[Series { name: "lr".into(), points: (0..50).map(|i| (i as f64, 1e-3)).collect(), dashed: false }], false);
        assert!(s.contains(">0.001<") && !s.contains("NaN"), "{s}");
        let zero = line_chart("share", "step", "share", &[Series { name: "exact".into(), points: (0..5).map(|i| (i as f64, 0.0)).collect(), dashed: false }], false);
        assert!(zero.contains(">0<") && zero.contains(">1<") && !zero.contains("e-30"), "{zero}");
    }

    #[test]
    fn chart_has_one_polyline_per_series_inside_the_frame() {
        let s = line_chart(
            "loss",
            "step",
            "nats",
            &[
                Series { name: "train".into(), points: vec![(0.0, 5.0), (10.0, 3.0), (20.0, 2.0)], dashed: false },
                Series { name: "val".into(), points: vec![(10.0, 3.2), (20.0, 2.2)], dashed: true },
            ],
            false,
        );
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("stroke-dasharray") && s.contains(">train<") && s.contains(">val<"));
        // The first training point (x = 0, the minimum) sits on the left edge of the frame (x = 70).
        assert!(s.contains("points=\"70.0,"));
    }
}
