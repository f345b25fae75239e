//! A horizontal bar chart: a bar from zero for each labelled value, with a ± whisker (a
//! `compare` table's accuracies or bits per byte, read at a glance).

use super::svg::{esc, labels, ticks, PALETTE};

/// One bar: its label, value and ± error (0 for none; a non-finite value draws no bar).
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub error: f64,
}

/// Bars of `bars` on an axis named `x_label`.
pub fn bar_chart(title: &str, x_label: &str, bars: &[Bar]) -> String {
    let longest = bars.iter().map(|b| b.label.chars().count()).max().unwrap_or(0).min(40) as f64;
    let (ml, mr, mt, mb, row) = ((24.0 + 7.0 * longest).max(80.0), 60.0, 40.0, 50.0, 28.0);
    let (w, h) = (ml + 480.0 + mr, mt + mb + row * bars.len().max(1) as f64);
    let shown: Vec<&Bar> = bars.iter().filter(|b| b.value.is_finite()).collect();
    let reach = |b: &&Bar| if b.error.is_finite() { b.error.abs() } else { 0.0 };
    let lo = shown.iter().map(|b| (b.value - reach(b)).min(0.0)).fold(0.0, f64::min);
    let hi = shown.iter().map(|b| (b.value + reach(b)).max(0.0)).fold(0.0, f64::max);
    let (lo, hi) = if hi - lo > 0.0 { (lo, hi + (hi - lo) * 0.05) } else { (0.0, 1.0) };
    let px = |x: f64| ml + (x - lo) / (hi - lo) * (w - ml - mr);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        w / 2.0,
        esc(title)
    );
    let xt = ticks(lo, hi, 6);
    for (&t, label) in xt.iter().zip(labels(&xt)) {
        let x = px(t);
        s += &format!("<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{mt}\" y2=\"{}\" stroke=\"#eee\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>\n", h - mb, h - mb + 16.0);
    }
    for (i, b) in bars.iter().enumerate() {
        let y = mt + row * i as f64;
        s += &format!("<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n", ml - 6.0, y + row / 2.0 + 4.0, esc(&b.label));
        if !b.value.is_finite() {
            s += &format!("<text x=\"{:.1}\" y=\"{:.1}\">not finite</text>\n", px(0.0) + 4.0, y + row / 2.0 + 4.0);
            continue;
        }
        let (a, z) = (px(b.value.min(0.0)), px(b.value.max(0.0)));
        s += &format!("<rect x=\"{a:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\n", y + row * 0.2, (z - a).max(0.5), row * 0.6, PALETTE[i % PALETTE.len()]);
        let e = reach(&b);
        if e > 0.0 {
            let (l, r, m) = (px(b.value - e), px(b.value + e), y + row / 2.0);
            s += &format!("<line x1=\"{l:.1}\" x2=\"{r:.1}\" y1=\"{m:.1}\" y2=\"{m:.1}\" stroke=\"#333\"/><line x1=\"{l:.1}\" x2=\"{l:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#333\"/><line x1=\"{r:.1}\" x2=\"{r:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>\n", m - 5.0, m + 5.0, m - 5.0, m + 5.0);
        }
        let value = three_digits(b.value);
        s += &format!("<text x=\"{:.1}\" y=\"{:.1}\">{value}</text>\n", px((b.value + e).max(0.0)) + 4.0, y + row / 2.0 + 4.0);
    }
    s += &format!("<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{mt}\" y2=\"{1}\" stroke=\"#333\"/>\n", px(0.0), h - mb);
    s += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n</svg>\n", (ml + w - mr) / 2.0, h - 10.0, esc(x_label));
    s
}

/// `v` to three significant digits: 52.5, 3.44, 0.275, 1234.
fn three_digits(v: f64) -> String {
    let decimals = if v == 0.0 { 0 } else { (2 - v.abs().log10().floor() as i64).clamp(0, 6) as usize };
    format!("{v:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_for_each_finite_value_labelled_and_escaped() {
        let bar = |label: &str, value: f64, error: f64| Bar { label: label.into(), value, error };
        let s = bar_chart("acc <x>", "accuracy, %", &[bar("fresh", 27.5, 3.2), bar("a<b>&c", 52.5, 3.5), bar("broken", f64::NAN, 0.0)]);
        assert_eq!(s.matches("<rect x=").count(), 2, "{s}");
        assert!(s.contains(">a&lt;b&gt;&amp;c<") && s.contains("acc &lt;x&gt;") && s.contains(">not finite<") && !s.contains("NaN"), "{s}");
        // Whiskers: three lines a bar with an error.
        assert_eq!(s.matches("stroke=\"#333\"/>").count(), 2 * 3 + 1, "{s}");
        // The longer bar reaches further right.
        let widths: Vec<f64> = s.match_indices("width=\"").skip(2).map(|(i, _)| s[i + 7..].split('"').next().unwrap().parse().unwrap()).collect();
        assert!(widths.len() == 2 && widths[1] > 1.8 * widths[0], "{widths:?}");
        assert!(s.contains(">27.5<") && s.contains(">52.5<"), "{s}");
        assert_eq!([3.4353, 0.275, 1234.0, 0.0].map(three_digits), ["3.44", "0.275", "1234", "0"]);
    }
}
