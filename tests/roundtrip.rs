//! Property: printing a recipe and parsing it back gives the same AST (spans aside), for
//! thousands of randomly generated recipes, and for every shipped and broken recipe.

use roux::rng::Rng;
use roux::syntax::{ast::strip_spans, parse, print::print};

fn ident(r: &mut Rng) -> String {
    const WORDS: &[&str] = &["d_model", "lr", "layers", "x", "corpus", "mlp", "adamw", "heads", "k9", "_tmp"];
    WORDS[r.below(WORDS.len() as u64) as usize].to_string()
}

fn expr(r: &mut Rng, depth: u32) -> String {
    let pick = if depth > 3 { r.below(4) } else { r.below(10) };
    match pick {
        0 => ["0", "128", "3e-4", "2k", "20M", "1.5B", "1_000", "0.9"][r.below(8) as usize].to_string(),
        1 => format!("\"{}\"", ["data/a.txt", "x y", "q\\\"uote", ""][r.below(4) as usize]),
        2 => ["true", "false"][r.below(2) as usize].to_string(),
        3 => (0..1 + r.below(3)).map(|_| ident(r)).collect::<Vec<_>>().join("."),
        4 => format!("{} {} {}", expr(r, depth + 1), ["+", "-", "*", "/", "^"][r.below(5) as usize], expr(r, depth + 1)),
        5 => format!("-{}", expr(r, depth + 1)),
        6 => format!("({})", expr(r, depth + 1)),
        7 => format!("[{}]", (0..r.below(3)).map(|_| expr(r, depth + 1)).collect::<Vec<_>>().join(", ")),
        8 => format!("({}, {})", expr(r, depth + 1), expr(r, depth + 1)),
        _ => {
            let args = if r.below(2) == 0 { format!("({})", (0..r.below(3)).map(|_| if r.below(2) == 0 { format!("{} = {}", ident(r), expr(r, depth + 1)) } else { expr(r, depth + 1) }).collect::<Vec<_>>().join(", ")) } else { String::new() };
            format!("{}{} {}", ident(r), args, block(r, depth + 1))
        }
    }
}

fn block(r: &mut Rng, depth: u32) -> String {
    let n = if depth > 3 { 0 } else { r.below(4) };
    format!("{{ {} }}", (0..n).map(|_| format!("{} = {}", ident(r), expr(r, depth + 1))).collect::<Vec<_>>().join("\n"))
}

fn recipe(r: &mut Rng) -> String {
    let mut body = vec![];
    for _ in 0..r.below(6) {
        body.push(match r.below(4) {
            0 => format!("{} = {}", ident(r), expr(r, 0)),
            1 => format!("{} {} = {}", ["data", "model", "stage"][r.below(3) as usize], ident(r), expr(r, 0)),
            2 => format!("budget {} {}", ident(r), block(r, 1)),
            _ => format!("sweep {} in [{}, {}]", ident(r), expr(r, 2), expr(r, 2)),
        });
    }
    format!("// generated\nexperiment \"e{}\" {{\n{}\n}}\n", r.below(100), body.join("\n"))
}

fn assert_roundtrip(text: &str) -> bool {
    let Ok(mut ast) = parse(text) else { return false };
    let printed = print(&ast);
    let mut again = parse(&printed).unwrap_or_else(|e| panic!("the printed recipe does not parse: {e:?}\n{printed}"));
    strip_spans(&mut ast);
    strip_spans(&mut again);
    assert_eq!(ast, again, "print → parse changed the recipe\n--- input\n{text}\n--- printed\n{printed}");
    true
}

#[test]
fn print_then_parse_is_the_identity_on_random_recipes() {
    let mut r = Rng(12345);
    let parsed = (0..5000).filter(|_| assert_roundtrip(&recipe(&mut r))).count();
    // Nearly all generated recipes are syntactically valid; make sure the property was exercised.
    assert!(parsed > 4000, "only {parsed} of 5000 generated recipes parsed");
}

#[test]
fn print_then_parse_is_the_identity_on_every_file() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["recipes", "tests/bad", "tests/fixtures"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_none_or(|x| x != "roux") {
                continue;
            }
            assert_roundtrip(&std::fs::read_to_string(&p).unwrap());
        }
    }
}

/// The YAML form accepts YAML's own spellings — a bare string (`prompt: instruction`), a list
/// for a pair (`betas: [0.9, 0.95]`), a quoted string with a real line break — and means the same
/// recipe as the roux form; its hints are written in YAML; `adapter = none` is a full fine-tune.
#[test]
fn yaml_spellings_mean_what_the_roux_form_means() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-runs/yaml-spellings");
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = "experiment: spelled\ndata corpus:\n  $: text(\"../../../data/tinyshakespeare.txt\")\n  context: 32\n\
        data mine:\n  $: instructions(\"../../../tests/fixtures/data/instructions.jsonl\")\n  prompt: instruction\n  response: output\n  template: \"Q: {prompt}\\nA: \"\n\
        model lm:\n  $: transformer\n  vocab: corpus.vocab\n  context: 64\n  d_model: 32\n  layers: 1\n  heads: 2\n\
        stage pretrain:\n  $: train(lm, corpus)\n  steps: 10\n  optimizer:\n    $: adamw\n    betas: [0.9, 0.95]\n\
        stage sft:\n  $: finetune(pretrain.model, mine)\n  steps: 5\n  adapter: none\n";
    let roux_form = r#"experiment "spelled" {
  data corpus = text("../../../data/tinyshakespeare.txt") { context = 32 }
  data mine = instructions("../../../tests/fixtures/data/instructions.jsonl") { prompt = "instruction", response = "output", template = "Q: {prompt}\nA: " }
  model lm = transformer { vocab = corpus.vocab, context = 64, d_model = 32, layers = 1, heads = 2 }
  stage pretrain = train(lm, corpus) { steps = 10, optimizer = adamw { betas = (0.9, 0.95) } }
  stage sft = finetune(pretrain.model, mine) { steps = 5 }
}"#;
    std::fs::write(dir.join("r.yaml"), yaml).unwrap();
    std::fs::write(dir.join("r.roux"), roux_form).unwrap();
    let a = roux::frontend::compile(&dir.join("r.yaml")).unwrap();
    let b = roux::frontend::compile(&dir.join("r.roux")).unwrap();
    let msgs = |c: &roux::frontend::Compiled| c.diagnostics.iter().map(|d| d.message.clone()).collect::<Vec<_>>();
    let (a, b) = (a.recipe.clone().unwrap_or_else(|| panic!("{:?}", msgs(&a))), b.recipe.clone().unwrap_or_else(|| panic!("{:?}", msgs(&b))));
    assert_eq!(serde_json::to_value(&a.stages).unwrap(), serde_json::to_value(&b.stages).unwrap());
    assert_eq!(serde_json::to_value(&a.examples).unwrap(), serde_json::to_value(&b.examples).unwrap());
    // A hint in a YAML recipe suggests YAML.
    std::fs::write(dir.join("bad.yaml"), yaml.replace("  layers: 1\n", "")).unwrap();
    let c = roux::frontend::compile(&dir.join("bad.yaml")).unwrap();
    let e = c.diagnostics.iter().find(|d| d.is_error()).unwrap();
    assert_eq!(e.hint.as_deref(), Some("add `layers: …` to the block"));
}

/// `roux fmt` of a YAML recipe keeps every comment, above or beside its key, and formats to a
/// fixed point (`fmt --check` passes after `fmt`); the file still checks.
#[test]
fn fmt_keeps_the_comments_of_a_yaml_recipe() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-runs/yaml-comments");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("c.yaml");
    std::fs::write(&f, "# header\nexperiment: commented   # the name\nmodel lm:\n  $: transformer\n  # sizes\n  vocab: 256\n  context: 32\n  d_model:    32\n  layers: 1\n  heads: 2 # two\n# the end\n").unwrap();
    let roux = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_roux")).args(args).output().unwrap();
    assert_eq!(roux(&["fmt", f.to_str().unwrap()]).status.code(), Some(0));
    let text = std::fs::read_to_string(&f).unwrap();
    assert_eq!(text, "# header\nexperiment: commented  # the name\nmodel lm:\n  $: transformer\n  # sizes\n  vocab: 256\n  context: 32\n  d_model: 32\n  layers: 1\n  heads: 2  # two\n# the end\n");
    assert_eq!(roux(&["fmt", "--check", f.to_str().unwrap()]).status.code(), Some(0));
    assert_eq!(roux(&["check", f.to_str().unwrap()]).status.code(), Some(0));
}

/// Negative zero keeps its sign through the YAML form, as through the recipe form (found by
/// fuzzing: `-0` was written as the integer 0, and `fmt` changed the recipe).
#[test]
fn negative_zero_survives_the_yaml_form() {
    use roux::syntax::{ast::strip_spans, yaml};
    // YAML's `-0` is the integer 0; `-.0` the float -0.
    for (text, kept) in [("experiment: x\nseed: -0\n", "seed: 0\n"), ("experiment: x\nmodel m:\n  $: transformer\n  dropout: -.0\n", "dropout: -0.0\n")] {
        let mut ast = yaml::from_yaml(text).unwrap();
        let written = yaml::to_yaml(&ast);
        let mut back = yaml::from_yaml(&written).unwrap();
        strip_spans(&mut ast);
        strip_spans(&mut back);
        assert_eq!(ast, back, "{written}");
        assert!(written.ends_with(kept), "{written}");
    }
}

/// The deepest recipe the text form accepts (64 levels of brackets, the experiment's block one of
/// them) has a YAML form that reads back as the same recipe (found by fuzzing, once the YAML
/// form's flow nesting was bounded, and brackets in its strings were counted).
#[test]
fn the_deepest_recipe_has_a_yaml_form_that_reads_back() {
    use roux::syntax::yaml;
    // And brackets in a string are text, in either form.
    let quoted = format!("\"{}'{}\"", "[".repeat(300), "{".repeat(300));
    for (inner, lists) in [("1", 63), ("f(1)", 62), ("f { a = 1 }", 62), (quoted.as_str(), 1)] {
        let text = format!("experiment \"deep\" {{\n  seed = {}{inner}{}\n}}\n", "[".repeat(lists), "]".repeat(lists));
        let mut ast = parse(&text).unwrap_or_else(|d| panic!("{inner}: {}", d.message));
        let mut back = yaml::from_yaml(&yaml::to_yaml(&ast)).unwrap_or_else(|d| panic!("{inner}: {}", d.message));
        strip_spans(&mut ast);
        strip_spans(&mut back);
        assert_eq!(ast, back, "{inner}");
    }
}
