//! Any bytes → parse → check (all of the front end, as `roux check` runs it) must not panic,
//! and printing a parsed recipe then parsing it again must give the same AST.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roux::syntax::{ast::strip_spans, parse, print::print};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(mut ast) = parse(text) else { return };
    // Sweeps expand to one check per point; the front end runs them all.
    let source = roux::frontend::Source { path: "fuzz/input.roux".into(), text: text.to_string() };
    let _ = roux::frontend::compile_source(source);
    let printed = print(&ast);
    let mut again = parse(&printed).expect("a printed recipe parses");
    strip_spans(&mut ast);
    strip_spans(&mut again);
    assert_eq!(ast, again, "print → parse changed the recipe");
});
