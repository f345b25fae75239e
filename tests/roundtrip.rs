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

/// Line breaks YAML 1.1 reads but roux's line-based readers of the text do not (a lone carriage
/// return, U+0085, U+2028, U+2029) are refused where they stand (found by fuzzing: a comment ended
/// by U+2028 was carried by `fmt` together with the value after it, and the YAML it wrote did not
/// parse); Windows line ends stay accepted, comments and all.
#[test]
fn yaml_line_breaks_roux_does_not_read_are_refused_and_crlf_is_kept() {
    use roux::syntax::yaml;
    for (brk, what) in [("\r", "a carriage return without a line feed"), ("\u{85}", "U+0085 NEXT LINE"), ("\u{2028}", "U+2028 LINE SEPARATOR"), ("\u{2029}", "U+2029 PARAGRAPH SEPARATOR")] {
        let text = format!("experiment: x  # a comment{brk}  seed: 1\nseed: 2\n");
        let d = yaml::from_yaml(&text).unwrap_err();
        assert_eq!(d.message, format!("YAML syntax error: {what}, which YAML 1.1 reads as a line break"));
        assert_eq!((d.span.start, d.hint.as_deref()), (26, Some("end lines with a line feed (\\n or \\r\\n); write the character as an escape in a double-quoted string if it is meant")));
    }
    let d = yaml::from_yaml("experiment: x  # a \u{202e}comment\n").unwrap_err();
    assert_eq!((d.message.as_str(), d.span.start), ("YAML syntax error: a bidirectional control character (U+202E), which reorders how the text is shown", 19));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-runs/yaml-crlf");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("w.yaml");
    std::fs::write(&f, "# top\r\nexperiment: crlf   # the name\r\nseed: 1\r\n").unwrap();
    let roux = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_roux")).args(args).output().unwrap();
    assert_eq!(roux(&["fmt", f.to_str().unwrap()]).status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "# top\nexperiment: crlf  # the name\nseed: 1\n");
}

/// Two YAML keys that are one key to roux (`stage  rl` and `stage rl`, ` seed` and `seed`) are
/// refused when read (found by fuzzing: `roux fmt` wrote one mapping key for both and the
/// second stage was gone from the file); the file is left as it was.
#[test]
fn yaml_keys_spelled_apart_that_name_one_thing_are_refused_not_merged() {
    use roux::syntax::yaml;
    let d = yaml::from_yaml("experiment: x\nstage  rl:\n  $: train(lm, c)\nstage rl:\n  $: train(lm, c)\n  steps: 5\n").unwrap_err();
    assert_eq!((d.code, d.message.as_str(), d.hint.as_deref()), ("E0102", "`stage rl` appears twice in one block (as `stage  rl` and `stage rl`)", Some("remove one of the two")));
    let d = yaml::from_yaml("experiment: x\nseed: 1\n\" seed\": 2\n").unwrap_err();
    assert_eq!((d.message.as_str(), d.span.start), ("`seed` appears twice in one block (as `seed` and ` seed`)", 22));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-runs/yaml-spelled-apart");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("w.yaml");
    let text = "experiment: x\nstage\trl:\n  $: train(lm, c)\nstage rl:\n  $: train(lm, c)\n  steps: 5\n";
    std::fs::write(&f, text).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_roux")).args(["fmt", f.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("error[E0102]: `stage rl` appears twice in one block (as `stage\\trl` and `stage rl`)"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&f).unwrap(), text);
}

/// The recipe form refuses the same characters (`// lr = 1e-3⏎lr = 1` was one comment where an
/// editor shows a setting), and a string writes them as escapes, `\u{2028}` and `\r`: a YAML
/// template holding them converts to the recipe form and back unchanged.
#[test]
fn recipe_text_shows_what_roux_reads_and_strings_escape_the_rest() {
    use roux::syntax::{ast::strip_spans, parse, print, yaml};
    for (raw, what) in [("\r", "a carriage return without a line feed"), ("\u{2028}", "U+2028 LINE SEPARATOR"), ("\u{85}", "U+0085 NEXT LINE")] {
        let d = parse(&format!("experiment \"x\" {{\n  // lr = 1e-3{raw}  seed = 1\n}}\n")).unwrap_err();
        assert_eq!(d.message, format!("syntax error: {what}, which editors show as a line break and roux does not"));
        assert_eq!((d.span.start, d.hint.as_deref()), (31, Some("end lines with a line feed (\\n or \\r\\n); write the character as an escape (`\\u{2028}`) in a string if it is meant")));
    }
    let d = parse("experiment \"x\" {\n  seed = 1 /* \u{2066} */\n}\n").unwrap_err();
    assert_eq!(d.message, "syntax error: a bidirectional control character (U+2066), which reorders how the text is shown");
    // Escapes read as the characters, and print back as escapes.
    let r = parse("experiment \"x\" {\n  data i = synthetic.instructions { template = \"Q:\\u{2028}{prompt}\\rA: \" }\n}\n").unwrap();
    let printed = print::print(&r);
    assert!(printed.contains(r#"template = "Q:\u{2028}{prompt}\rA: ""#), "{printed}");
    // Unclosed escapes are looked at six digits deep: 600,000 of them (1.8 MB) read in well under
    // a second (looking for each one's `}` to the string's end took 8.5 s at 300,000).
    let many = format!("experiment \"x\" {{\n  data i = synthetic.instructions {{ template = \"{}{{prompt}}\" }}\n}}\n", "\\u{".repeat(600_000));
    let t = std::time::Instant::now();
    let r = parse(&many).unwrap();
    assert!(t.elapsed().as_secs() < 15, "{:?}", t.elapsed());
    assert!(print::print(&r).contains(&format!("\"{}{{prompt}}\"", "u{".repeat(600_000))));
    let from_yaml = yaml::from_yaml("experiment: x\ndata i:\n  $: synthetic.instructions\n  template: \"Q:\\u2028{prompt}\\rA: \"\n").unwrap();
    let (mut a, mut b) = (parse(&print::print(&from_yaml)).unwrap(), from_yaml.clone());
    strip_spans(&mut a);
    strip_spans(&mut b);
    assert_eq!(a, b);
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
