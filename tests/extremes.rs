//! Property: every number of every shipped recipe and fixture — so every numeric key of every
//! constructor they use — replaced by an extreme (0, negative, 1e308, 2^64, NaN, tiny, huge
//! negative) gives `check`, `plan` and `fmt` a diagnostic or a result: never a panic, a hang or
//! a blown-up allocation. In the recipe form and, for a share of them, the YAML form.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use roux::frontend::{compile_source, Source};
use roux::syntax::ast::{ExprKind, SourceFile};

/// The extremes, as a recipe writes them (`0 / 0` is the only way to spell NaN).
const EXTREMES: &[&str] = &["0", "-1", "1e308", "18446744073709551616", "(0 / 0)", "1e-308", "9007199254740993", "-1e308", "0.5"];

/// The spans of every number literal of a recipe.
fn numbers(ast: &SourceFile) -> Vec<(usize, usize)> {
    let mut out = vec![];
    roux::syntax::ast::walk_exprs_mut(&mut ast.body.clone(), &mut |e| {
        if let ExprKind::Num { .. } = e.kind {
            out.push((e.span.start, e.span.end));
        }
    });
    out
}

/// Check, plan and format one text; panics propagate to the caller's catch.
fn exercise(path: &Path, text: &str) -> bool {
    let c = compile_source(Source { path: path.to_path_buf(), text: text.to_string() });
    let failed = c.recipe.is_none();
    assert!(!failed || c.diagnostics.iter().any(|d| d.is_error()), "{}: rejected without a diagnostic\n{text}", path.display());
    for r in c.recipes() {
        let p = roux::plan::plan(r);
        assert!(p.models.iter().all(|m| m.flops_per_token_6n.is_finite()), "{}: a plan of non-finite FLOPs\n{text}", path.display());
    }
    if roux::frontend::is_yaml(path) {
        if let Ok(ast) = roux::syntax::yaml::from_yaml(text) {
            let _ = roux::syntax::yaml_comments::carry(text, &roux::syntax::yaml::to_yaml(&ast));
        }
    } else {
        let _ = roux::syntax::print::format(text);
    }
    failed
}

#[test]
fn extreme_numbers_in_every_key_give_diagnostics_not_panics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = ["recipes", "tests/fixtures"]
        .iter()
        .flat_map(|d| std::fs::read_dir(root.join(d)).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| p.extension().is_some_and(|x| x == "roux"))
        .collect();
    files.sort();
    let (mut cases, mut refused, mut slowest) = (0usize, 0usize, (Duration::ZERO, String::new()));
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let ast = roux::syntax::parse(&text).unwrap();
        let spans = numbers(&ast);
        for (i, &(a, b)) in spans.iter().enumerate() {
            for (k, x) in EXTREMES.iter().enumerate() {
                let mutated = format!("{}{x}{}", &text[..a], &text[b..]);
                // The same directory, so relative data paths still resolve.
                let as_roux = f.with_file_name(format!(".extreme-{}", f.file_name().unwrap().to_string_lossy()));
                let t0 = Instant::now();
                let outcome = std::panic::catch_unwind(|| exercise(&as_roux, &mutated));
                let what = format!("{}: number {i} ({}) → {x}", f.display(), &text[a..b]);
                let failed = outcome.unwrap_or_else(|_| panic!("{what}: panicked"));
                // The YAML form of the same recipe, for every third case.
                if (i + k) % 3 == 0 {
                    if let Ok(ast) = roux::syntax::parse(&mutated) {
                        if roux::syntax::yaml::duplicate_key(&ast).is_none() {
                            let y = roux::syntax::yaml::to_yaml(&ast);
                            let as_yaml = as_roux.with_extension("yaml");
                            std::panic::catch_unwind(|| exercise(&as_yaml, &y)).unwrap_or_else(|_| panic!("{what} (YAML form): panicked"));
                        }
                    }
                }
                let took = t0.elapsed();
                // A hang guard, not a speed assertion (the front end takes milliseconds here).
                assert!(took < Duration::from_secs(20), "{what}: {took:?}");
                if took > slowest.0 {
                    slowest = (took, what);
                }
                cases += 1;
                refused += failed as usize;
            }
        }
    }
    // The process stayed small: no extreme made the front end allocate for it.
    let peak_kb: u64 = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0))))
        .unwrap_or(0);
    assert!(peak_kb < 2 << 20, "peak memory {peak_kb} kB");
    assert!(cases > 2000, "only {cases} cases");
    assert!(refused > cases / 3, "only {refused} of {cases} extremes were refused: are the files checked at all?");
    eprintln!("{cases} extreme cases over {} files, {refused} refused with a diagnostic; slowest {:?} ({}); peak {} MB", files.len(), slowest.0, slowest.1, peak_kb / 1024);
}
