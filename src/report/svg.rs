//! A small line-chart writer: axes with ticks, one polyline per series, a legend.

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Dashed lines for secondary series (validation curves, fits).
    pub dashed: bool,
}

const PALETTE: &[&str] = &["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Round tick spacing: 1, 2 or 5 × 10^n giving about `n` ticks over [lo, hi].
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| span / s <= n as f64).unwrap_or(10.0 * mag);
    let mut t = (lo / step).ceil() * step;
    let mut out = vec![];
    while t <= hi + step * 1e-9 {
        out.push(t);
        t += step;
    }
    out
}

fn label(v: f64) -> String {
    if v.abs() < 1e-12 {
        return "0".into();
    }
    if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-3) {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
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
    let (w, h) = (720.0, 420.0);
    let (ml, mr, mt, mb) = (70.0, 170.0, 40.0, 50.0);
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
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-9);
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
    for t in ticks(y0, y1, 6) {
        let y = py(t);
        let shown = if log_y { label_pow(t) } else { label(t) };
        s += &format!("<line x1=\"{ml}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n", w - mr, ml - 6.0, y + 4.0, shown);
    }
    for t in ticks(x0, x1, 7) {
        let x = px(t);
        let shown = if log_x { label_pow(t) } else { label(t) };
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
