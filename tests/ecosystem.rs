//! The YAML form, `--set` overrides, `roux fmt` and completions: what meets researchers where they
//! already work. None of it needs libtorch.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use roux::frontend::{compile_source, Source};
use roux::syntax::ast::strip_spans;
use roux::syntax::{parse, print, yaml};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn roux(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_roux")).args(args).output().expect("run roux")
}

fn shipped() -> Vec<PathBuf> {
    let mut v = vec![];
    for dir in ["recipes", "tests/fixtures"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "roux") {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

fn plan_json(path: &Path, text: String) -> String {
    let c = compile_source(Source { path: path.to_path_buf(), text });
    assert!(c.recipe.is_some(), "{}: {:?}", path.display(), c.diagnostics);
    let plans: Vec<_> = c.recipes().into_iter().map(roux::plan::plan).collect();
    serde_json::to_string(&serde_json::to_value(&plans).unwrap()).unwrap()
}

#[test]
fn every_shipped_recipe_goes_to_yaml_and_back_unchanged_with_the_same_plan() {
    for p in shipped() {
        let text = std::fs::read_to_string(&p).unwrap();
        let mut a = parse(&text).unwrap();
        let y = yaml::to_yaml(&a);
        let mut b = yaml::from_yaml(&y).unwrap_or_else(|d| panic!("{}: {d:?}\n{y}", p.display()));
        // Back to recipe text: the same text as printing the original.
        assert_eq!(print::print(&b), print::print(&a), "{}", p.display());
        strip_spans(&mut a);
        strip_spans(&mut b);
        assert_eq!(a, b, "{}", p.display());
        // The YAML file beside the original (same folder, so the same relative paths) plans alike.
        assert_eq!(plan_json(&p.with_extension("yaml"), y), plan_json(&p, text), "{}", p.display());
    }
}

#[test]
fn yaml_diagnostics_point_into_the_yaml_file() {
    let text = std::fs::read_to_string(root().join("recipes/demo.roux")).unwrap();
    let y = yaml::to_yaml(&parse(&text).unwrap()).replace("  d_model: 128", "  d_modle: 128");
    let c = compile_source(Source { path: root().join("recipes/demo.yaml"), text: y.clone() });
    let d = c.diagnostics.iter().find(|d| d.code == "E0100").expect("unknown key reported");
    let (line, col) = roux::diag::line_col(&y, d.span.start);
    assert_eq!(y.lines().nth(line - 1).unwrap(), "  d_modle: 128");
    assert_eq!(col, 3);
    assert_eq!(d.hint.as_deref(), Some("did you mean `d_model`?"));
}

#[test]
fn a_misspelled_override_gets_a_suggestion_and_a_typed_one_changes_the_plan() {
    let demo = root().join("recipes/demo.roux");
    let o = roux(&["check", demo.to_str().unwrap(), "--set", "lm.d_modle=256"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("error[E0100]: unknown key `d_modle`") && err.contains("did you mean `d_model`?") && err.contains("--set lm.d_modle=256"), "{err}");
    let o = roux(&["check", demo.to_str().unwrap(), "--set", "pretrain.optimiser.lr=1e-3"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("did you mean `optimizer`?"));
    // A wrongly typed value is the checker's usual error.
    let o = roux(&["check", demo.to_str().unwrap(), "--set", "lm.layers=2.5"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("E0123"), "{}", String::from_utf8_lossy(&o.stderr));

    let o = roux(&["plan", demo.to_str().unwrap(), "--json", "--set", "lm.d_model=256", "--set", "pretrain.optimizer.lr=1e-3"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // d = 256, V = 256, T = 128, 4 blocks, tied head, no biases, layernorm without bias:
    //   embeddings V·d + T·d = 65,536 + 32,768 = 98,304
    //   per block: attention 4d² = 262,144, MLP 2·d·4d = 524,288, two norms 2d = 512 → 786,944
    //   final norm d = 256
    //   98,304 + 4 × 786,944 + 256 = 3,246,336 (the file's d = 128 gives 836,736).
    assert_eq!(plan["models"][0]["params_total"], 3_246_336);
    let c = roux::frontend::compile_with(&demo, &roux::frontend::Options { overrides: vec!["pretrain.optimizer.lr=1e-3".into()], ..Default::default() }).unwrap();
    let roux::recipe::StageKind::Train(t) = &c.recipe.unwrap().stages[0].kind else { panic!() };
    assert_eq!(t.optimizer.lr, 1e-3);
}

#[test]
fn fmt_is_idempotent_keeps_comments_and_the_recipe_on_every_shipped_file() {
    for p in shipped() {
        let text = std::fs::read_to_string(&p).unwrap();
        let once = print::format(&text).unwrap();
        assert_eq!(print::format(&once).unwrap(), once, "{}: not idempotent", p.display());
        // The shipped files are kept formatted.
        assert_eq!(once, text, "{}: not formatted; run `roux fmt {}`", p.display(), p.display());
        let (mut a, mut b) = (parse(&text).unwrap(), parse(&once).unwrap());
        strip_spans(&mut a);
        strip_spans(&mut b);
        assert_eq!(a, b, "{}", p.display());
    }
    // Comments of every kind and place survive a reformat of a messy file.
    let messy = "// head\nexperiment \"x\" {   seed=1 // seed\n  /* block */ data corpus = text(\"../data/tinyshakespeare.txt\") { context = 8 }\n\n\n  model lm = transformer { vocab = 256, context = 8, d_model = 8,\n layers = 1, heads = 2 } // trailing\n  // last\n}\n// tail\n";
    let f = print::format(messy).unwrap();
    for c in ["// head", "// seed", "/* block */", "// trailing", "// last", "// tail"] {
        assert!(f.contains(c), "lost {c}:\n{f}");
    }
    assert_eq!(print::format(&f).unwrap(), f);
    assert!(f.contains("data corpus = text(\"../data/tinyshakespeare.txt\") { context = 8 }\n\n  model lm"), "{f}");
}

#[test]
fn fmt_check_reports_unformatted_files_and_changes_nothing() {
    let dir = root().join("target/test-runs/fmt");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("a.roux");
    std::fs::write(&f, "experiment \"a\" {seed=1}\n").unwrap();
    let o = roux(&["fmt", "--check", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not formatted"));
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "experiment \"a\" {seed=1}\n");
    assert_eq!(roux(&["fmt", f.to_str().unwrap()]).status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "experiment \"a\" {\n  seed = 1\n}\n");
    assert_eq!(roux(&["fmt", "--check", f.to_str().unwrap()]).status.code(), Some(0));
}

#[test]
fn fmt_converts_between_forms_and_completions_name_every_subcommand() {
    let demo = root().join("recipes/demo.roux");
    let y = roux(&["fmt", "--to", "yaml", demo.to_str().unwrap()]);
    assert_eq!(y.status.code(), Some(0));
    let y = String::from_utf8(y.stdout).unwrap();
    assert!(y.starts_with("experiment: demo\n") && y.contains("stage pretrain:\n  $: train(lm, corpus)"), "{y}");
    let bash = String::from_utf8(roux(&["completions", "bash"]).stdout).unwrap();
    for sub in ["check", "plan", "run", "fmt", "budget", "fit", "sample", "report", "graph", "bench"] {
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
}

/// "Validate recipes in CI": the pre-commit hook and the GitHub Action both run
/// scripts/roux-check-hook.sh, which runs `roux check --format github`. Run as the hook runs it
/// (with this build as the validator), it passes every shipped recipe and annotates a bad one.
#[test]
fn the_precommit_hook_and_the_action_run_the_checker_as_annotations() {
    let hooks: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(root().join(".pre-commit-hooks.yaml")).unwrap()).unwrap();
    let hook = &hooks[0];
    assert_eq!((hook["id"].as_str(), hook["entry"].as_str(), hook["language"].as_str()), (Some("roux-check"), Some("scripts/roux-check-hook.sh"), Some("script")));
    let action = std::fs::read_to_string(root().join(".github/actions/check/action.yml")).unwrap();
    let action: serde_yaml::Value = serde_yaml::from_str(&action).unwrap();
    let steps = action["runs"]["steps"].as_sequence().unwrap();
    assert!(steps[0]["run"].as_str().unwrap().contains("--no-default-features") && steps[1]["run"].as_str().unwrap().contains("scripts/roux-check-hook.sh"));
    let hook = |files: Vec<PathBuf>| Command::new(root().join("scripts/roux-check-hook.sh")).args(files).env("ROUX_VALIDATOR", env!("CARGO_BIN_EXE_roux")).output().unwrap();
    let o = hook(shipped());
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(!out.contains("::error"), "{out}");
    let bad = root().join("tests/bad/unknown_key.roux");
    let o = hook(vec![bad.clone()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1));
    assert!(out.starts_with(&format!("::error file={},line=", bad.display())) && out.contains("[E0100] unknown key `dmodel`"), "{out}");
}
