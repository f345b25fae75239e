//! Any bytes → the front end, as `roux check` runs it, in both forms (recipe text and YAML) must
//! not panic; printing a parsed recipe then parsing it again must give the same AST; formatting
//! keeps the recipe; the YAML form of a parsed recipe reads back as the same AST; and `roux fmt`
//! of a YAML file (comments carried) keeps the recipe at a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roux::syntax::{ast::strip_spans, parse, print, yaml};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The YAML form first: whatever it makes of the bytes, no panic.
    let y = roux::frontend::Source { path: "fuzz/input.yaml".into(), text: text.to_string() };
    let _ = roux::frontend::compile_source(y);
    // `roux fmt` of a YAML file: its layout with the comments carried over reads back as the
    // same recipe, and formatting it again changes nothing (`fmt --check` passes after `fmt`).
    if let Ok(mut yast) = yaml::from_yaml(text) {
        let formatted = roux::syntax::yaml_comments::carry(text, &yaml::to_yaml(&yast));
        let mut back = yaml::from_yaml(&formatted).expect("formatted YAML reads back");
        let again = roux::syntax::yaml_comments::carry(&formatted, &yaml::to_yaml(&back));
        assert_eq!(formatted, again, "YAML fmt is not at a fixed point");
        strip_spans(&mut yast);
        strip_spans(&mut back);
        assert_eq!(yast, back, "YAML fmt changed the recipe");
    }
    let Ok(mut ast) = parse(text) else { return };
    // Sweeps expand to one check per point; the front end runs them all.
    let source = roux::frontend::Source { path: "fuzz/input.roux".into(), text: text.to_string() };
    let _ = roux::frontend::compile_source(source);
    let printed = print::print(&ast);
    let mut again = parse(&printed).expect("a printed recipe parses");
    let formatted = print::format(text).expect("a parsed recipe formats");
    let mut reformatted = parse(&formatted).expect("a formatted recipe parses");
    // A YAML mapping cannot hold a key twice (such recipes are invalid anyway: E0102).
    let has_yaml_form = yaml::duplicate_key(&ast).is_none();
    let mut from_yaml = if has_yaml_form { yaml::from_yaml(&yaml::to_yaml(&ast)).expect("the YAML form of a recipe reads back") } else { again.clone() };
    strip_spans(&mut ast);
    for (other, what) in [(&mut again, "print → parse"), (&mut reformatted, "fmt"), (&mut from_yaml, "YAML → back")] {
        strip_spans(other);
        assert_eq!(&ast, other, "{what} changed the recipe");
    }
});
