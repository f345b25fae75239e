//! `sweep NAME in [v1, v2, …]` at the top of an experiment: the recipe expands at check time into
//! one recipe per value (the cartesian product over several sweeps), with `NAME = value` in place
//! of the sweep line and the experiment named `<name>-NAME=value`. Every point is then checked
//! like a hand-written recipe; its errors say which point they belong to.

use crate::diag::{Code, Diagnostic, Span};
use crate::syntax::ast::{Entry, ExprKind, Field, SourceFile};

/// One point of a sweep: its recipe and the value of each swept name, as printed in a recipe.
pub struct SweepPoint {
    pub ast: SourceFile,
    pub bindings: Vec<(String, String)>,
}

impl SweepPoint {
    /// `d_model=64,norm=rmsnorm`: how diagnostics and the experiment's name call the point.
    pub fn label(&self) -> String {
        self.bindings.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
    }
}

/// A point's label as it ends its experiment's name (one path component).
pub fn name_suffix(label: &str) -> String {
    label.replace(['/', ' ', '"'], "_")
}

/// The most points a sweep may expand to, and the most bytes of recipe they may add up to.
const MAX_POINTS: usize = 10_000;
const MAX_POINT_BYTES: usize = 8 << 20;

/// The expanded points, or a diagnostic for a malformed sweep.
pub fn expand(ast: &SourceFile) -> Result<Vec<SweepPoint>, Vec<Diagnostic>> {
    let mut axes = vec![];
    let mut errors = vec![];
    for e in &ast.body.entries {
        if let Entry::Sweep(s) = e {
            match &s.values.kind {
                ExprKind::List(v) if !v.is_empty() => axes.push((s.var.clone(), v.clone(), s.span)),
                _ => errors.push(
                    Diagnostic::error(Code::E0120, s.values.span, format!("`sweep {}` expects a non-empty list of values", s.var.name))
                        .with_hint(format!("write `sweep {} in [64, 128, 256]`", s.var.name)),
                ),
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // Multiplied in floating point: 64 two-value sweeps would wrap a machine integer to 0.
    let points: f64 = axes.iter().map(|(_, v, _)| v.len() as f64).product();
    let span = axes.first().map_or(Span::default(), |a| a.2);
    let shown = if points < 1e15 { format!("{points}") } else { format!("{points:.3e}") };
    if points > MAX_POINTS as f64 {
        return Err(vec![Diagnostic::error(Code::E0243, span, format!("this sweep expands to {shown} recipes"))
            .with_hint("at most 10,000 points; split the sweep into several recipes")]);
    }
    // Every point is a copy of the recipe, checked in full: bounded in bytes too, so that a
    // large recipe with a few sweeps is not hours of checking and gigabytes of copies.
    let size = ast.body.span.end.saturating_sub(ast.body.span.start).max(1);
    if points * size as f64 > MAX_POINT_BYTES as f64 {
        return Err(vec![Diagnostic::error(Code::E0243, span, format!("this sweep expands to {shown} recipes of {size} bytes, {:.0} MiB to check", points * size as f64 / (1 << 20) as f64))
            .with_hint("at most 8 MiB of recipes (4,000 points of 2 KB, 100 of 80 KB); split the sweep or the recipe")]);
    }
    let total = points as usize;
    let mut out: Vec<SweepPoint> = vec![];
    // Each point's run directory, as a file system that ignores case sees it, and its label.
    let mut dirs: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for i in 0..total {
        let mut rem = i;
        let mut point = ast.clone();
        let mut bindings = vec![];
        let mut k = 0;
        for e in point.body.entries.iter_mut() {
            if let Entry::Sweep(s) = e {
                let values = &axes[k].1;
                let v = values[rem % values.len()].clone();
                rem /= values.len();
                k += 1;
                let mut shown = String::new();
                crate::syntax::print::expr(&mut shown, &v, 0);
                bindings.push((s.var.name.clone(), shown));
                *e = Entry::Field(Field { key: s.var.clone(), value: v });
            }
        }
        let mut point = SweepPoint { ast: point, bindings };
        point.ast.name = format!("{}-{}", ast.name, name_suffix(&point.label()));
        // Two points whose names differ only where the name must change them (`"a/b"` and
        // `"a b"`) or in case would write one run directory.
        if let Some(other) = dirs.insert(point.ast.name.to_ascii_lowercase(), point.label()).filter(|l| *l != point.label()) {
            return Err(vec![Diagnostic::error(Code::E0102, span, format!("the sweep points `{other}` and `{}` would share the run directory `{}`", point.label(), point.ast.name))
                .with_hint("use values that differ in more than case, `/`, spaces and quotes")]);
        }
        out.push(point);
    }
    Ok(out)
}
