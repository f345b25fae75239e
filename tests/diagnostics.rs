//! Every recipe in tests/bad/ states the errors it must produce (`// expect: CODE line:col message`
//! and the hint on the next line);
//! checking it must give exactly those, and the CLI must exit 1 without panicking.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn bad_recipes() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/bad exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "roux"))
        .collect();
    files.sort();
    files
}

/// The errors a bad recipe states: `// expect: CODE line:col message`, each followed by
/// `//   hint: …`. The project's folder reads as `$ROOT`, so the text does not depend on the clone.
fn expectations(text: &str) -> Vec<String> {
    let mut v = vec![];
    let mut lines = text.lines().map(str::trim).peekable();
    while let Some(l) = lines.next() {
        if let Some(e) = l.strip_prefix("// expect:") {
            let hint = lines.next_if(|h| h.starts_with("//   hint:")).map_or("", |h| &h["//   hint:".len()..]);
            v.push(format!("{} | hint:{}", e.trim(), hint));
        }
    }
    v.sort();
    v
}

/// What checking `f` says, in the form of its expectations.
fn stated(f: &Path, text: &str, diagnostics: &[roux::diag::Diagnostic]) -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut got: Vec<String> = diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| {
            let (l, col) = roux::diag::line_col(text, d.span.start);
            let hint = d.hint.as_deref().unwrap_or("");
            assert!(!d.message.contains('\n') && !hint.contains('\n'), "{}: a diagnostic of one line", f.display());
            format!("{} {l}:{col} {} | hint: {}", d.code, d.message.replace(root, "$ROOT"), hint.replace(root, "$ROOT"))
        })
        .collect();
    got.sort();
    got
}

/// `ROUX_BLESS=1 cargo test --test diagnostics` rewrites every file's expectations from what the
/// checker says now; review the diff before committing it.
fn bless(f: &Path, text: &str, got: &[String]) {
    let mut out: Vec<String> = vec![];
    let mut placed = false;
    for l in text.lines() {
        let t = l.trim();
        if t.starts_with("// expect:") || t.starts_with("//   hint:") {
            continue;
        }
        if !placed && !t.starts_with("//") {
            for g in got {
                let (e, hint) = g.split_once(" | hint: ").unwrap();
                out.push(format!("// expect: {e}"));
                out.push(format!("//   hint: {hint}"));
            }
            placed = true;
        }
        out.push(l.to_string());
    }
    std::fs::write(f, out.join("\n") + "\n").unwrap();
}

#[test]
fn at_least_thirty_bad_recipes() {
    assert!(bad_recipes().len() >= 30, "only {} bad recipes", bad_recipes().len());
}

#[test]
fn each_bad_recipe_gives_exactly_its_stated_errors() {
    let mut failures = vec![];
    for f in bad_recipes() {
        let c = roux::frontend::compile(&f).expect("readable");
        let want = expectations(&c.source.text);
        let got = stated(&f, &c.source.text, &c.diagnostics);
        assert!(c.recipe.is_none(), "{} produced a recipe", f.display());
        if std::env::var_os("ROUX_BLESS").is_some() {
            bless(&f, &c.source.text, &got);
            continue;
        }
        assert!(!want.is_empty(), "{} states no expectation", f.display());
        if got != want {
            failures.push(format!("{}:\n  want {want:#?}\n  got  {got:#?}", f.display()));
        }
        for d in &c.diagnostics {
            assert!(d.hint.is_some(), "{}: {} has no hint", f.display(), d.code);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn cli_exits_1_with_file_line_col_and_no_panic() {
    let files = bad_recipes();
    let out = Command::new(env!("CARGO_BIN_EXE_roux")).arg("check").args(&files).output().expect("run roux");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for f in &files {
        let c = roux::frontend::compile(f).unwrap();
        for e in expectations(&c.source.text) {
            let mut words = e.split(' ');
            let (code, pos) = (words.next().unwrap(), words.next().unwrap());
            let needle = format!("{}:{pos}: error[{code}]", f.display());
            assert!(stderr.contains(&needle), "missing `{needle}` in output");
        }
    }
}

#[test]
fn json_format_has_the_documented_fields() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad/several_errors.roux");
    let out = Command::new(env!("CARGO_BIN_EXE_roux")).args(["check", "--format", "json"]).arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json array");
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 4);
    for d in arr {
        for k in ["file", "line", "col", "end_line", "end_col", "severity", "code", "message", "hint"] {
            assert!(d.get(k).is_some(), "missing {k} in {d}");
        }
    }
    // `gelo` on line 19, cols 45..49, with a did-you-mean.
    let gelo = arr.iter().find(|d| d["code"] == "E0130").unwrap();
    assert_eq!((gelo["line"].as_u64(), gelo["col"].as_u64(), gelo["end_col"].as_u64()), (Some(19), Some(45), Some(49)));
    assert!(gelo["hint"].as_str().unwrap().contains("did you mean `gelu`"));
}

#[test]
fn usage_and_io_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_roux")).args(["check", "no/such/file.roux"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_roux")).args(["check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let dir = std::env::temp_dir().join(format!("roux-binary-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("x.roux");
    std::fs::write(&bin, [0xff, 0xfe, 0x00, 0x80]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_roux")).arg("check").arg(&bin).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not UTF-8"));
}

/// `--format github` output is a workflow command GitHub parses: a file name with `,` or `::` or a
/// line break, or a message with CR or LF, must not end a value early or start a second command
/// (GitHub's toolkit: escapeProperty and escapeData).
#[test]
fn github_annotations_escape_every_property_and_the_message() {
    use roux::diag::{render_github, Code, Diagnostic, Span};
    let d = Diagnostic::error(Code::E0110, Span::new(0, 1), "line\r\n::warning::injected 100%").with_hint("a, b: c");
    assert_eq!(
        render_github("a,b::c\nd.roux", "x\n", &d),
        "::error file=a%2Cb%3A%3Ac%0Ad.roux,line=1,col=1,endLine=1,endColumn=2::[E0110] line%0D%0A::warning::injected 100%25 (hint: a, b: c)\n"
    );
}

/// A diagnostic writes recipe text to a terminal or a CI log: an escape sequence in a path (the
/// grammar lets a string hold one) must not recolour or rewrite the screen, nor a bidirectional
/// control reorder the line. In the message and hint each is written `\u{…}`; in the source
/// line under the caret each is one `�`, so the caret stays under its column.
#[test]
fn diagnostics_show_control_characters_instead_of_sending_them() {
    let dir = common::scratch("control-characters");
    let f = dir.join("r.roux");
    std::fs::write(&f, "experiment \"x\" {\n  data d = text(\"\u{1b}[2J.txt\") { context = 8 }\n}\n").unwrap();
    let o = common::roux(&["check", f.to_str().unwrap()]);
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(!err.contains('\u{1b}'), "{err:?}");
    let want = "error[E0210]: data file `\\u{1b}[2J.txt` not found\n  |\n2 |   data d = text(\"\u{fffd}[2J.txt\") { context = 8 }\n  |                 ^^^^^^^^^^\n  = hint: paths are relative to the recipe's folder; looked for ";
    assert!(err.contains(want) && err.contains("/\\u{1b}[2J.txt\n"), "{err}");
    let d = roux::diag::Diagnostic::error(roux::diag::Code::E0110, roux::diag::Span::new(0, 1), "a \u{202e}b");
    assert_eq!(roux::diag::render_github("r.roux", "x\n", &d), "::error file=r.roux,line=1,col=1,endLine=1,endColumn=2::[E0110] a \\u{202e}b\n");
}

/// Input that would nest deeper than anything recurses safely: 200,000 levels of brackets, of
/// minus signs, of operators (a left-leaning `+` chain and a right-leaning `^` chain), and of
/// YAML flow collections (whose scanner is quadratic in their depth: minutes at this size). Each
/// is one pinned diagnostic, in a test thread's 2 MB of stack, in well under a second.
#[test]
fn nesting_past_the_bounds_is_one_diagnostic_not_a_stack_overflow_or_a_hang() {
    let n = 200_000;
    let roux_text = |v: String| format!("experiment \"x\" {{\n  seed = {v}\n}}\n");
    let cases = [
        ("r.roux", roux_text(format!("{}1{}", "(".repeat(n), ")".repeat(n))), (2, 73), "nesting deeper than 64 levels"),
        ("r.roux", roux_text(format!("{}1", "-".repeat(n))), (2, 10), "an expression nested deeper than 256 levels (each operator and minus sign is one)"),
        ("r.roux", roux_text(format!("1{}", " + 1".repeat(n))), (2, 10), "an expression nested deeper than 256 levels (each operator and minus sign is one)"),
        ("r.roux", roux_text(format!("{}2", "2 ^ ".repeat(n))), (2, 10), "an expression nested deeper than 256 levels (each operator and minus sign is one)"),
        // A string holding an escaped backslash ends at its third quote; the brackets after count.
        ("r.roux", format!("experiment \"x\" {{\n  name = \"\\\\\"\n  seed = {}1{}\n}}\n", "(".repeat(n), ")".repeat(n)), (3, 73), "nesting deeper than 64 levels"),
        ("r.yaml", format!("experiment: x\nseed: {}{}\n", "[".repeat(n), "]".repeat(n)), (2, 263), "nesting deeper than 256 levels"),
        ("r.yaml", format!("experiment: x\nseed: {}1{}\n", "{a: ".repeat(n), "}".repeat(n)), (2, 1031), "nesting deeper than 256 levels"),
    ];
    for (path, text, (line, col), want) in cases {
        let t = std::time::Instant::now();
        let c = roux::frontend::compile_source(roux::frontend::Source { path: path.into(), text: text.clone() });
        let d: Vec<(String, usize, usize, String)> = c.diagnostics.iter().map(|d| {
            let (l, c) = roux::diag::line_col(&text, d.span.start);
            (d.code.to_string(), l, c, d.message.clone())
        }).collect();
        assert_eq!(d, vec![("E0002".to_string(), line, col, want.to_string())], "{}", &text[..80]);
        assert!(t.elapsed().as_secs() < 20, "{path}: {:?}", t.elapsed());
    }
    // At the bounds, fine: 64 brackets, and an expression 250 operators long.
    for text in [roux_text(format!("{}1{}", "(".repeat(63), ")".repeat(63))), roux_text(format!("1{}", " + 1".repeat(250)))] {
        let c = roux::frontend::compile_source(roux::frontend::Source { path: "ok.roux".into(), text });
        assert!(c.diagnostics.iter().all(|d| d.code != "E0002"), "{:?}", c.diagnostics.iter().map(|d| &d.message).collect::<Vec<_>>());
    }
}
