//! The language reference cannot drift from the language: every example in docs/reference.md
//! checks (or fails with the code it names), and every diagnostic code in the source is listed.

use std::path::Path;

use roux::frontend::{compile_source, Source};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// (info string, body) of every fenced block.
fn blocks(md: &str) -> Vec<(String, String)> {
    let mut out = vec![];
    let mut cur: Option<(String, String)> = None;
    for line in md.lines() {
        match (&mut cur, line.strip_prefix("```")) {
            (None, Some(info)) => cur = Some((info.trim().to_string(), String::new())),
            (Some(_), Some("")) => out.push(cur.take().unwrap()),
            (Some((_, body)), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

#[test]
fn every_example_in_the_reference_checks_or_gives_its_stated_error() {
    let md = std::fs::read_to_string(root().join("docs/reference.md")).unwrap();
    let (mut checked, mut failing) = (0, 0);
    for (i, (info, body)) in blocks(&md).into_iter().enumerate() {
        let ext = match info.split_whitespace().next() {
            Some("roux") => "roux",
            Some("yaml") => "yaml",
            _ => continue,
        };
        let path = root().join("docs").join(format!("example-{i}.{ext}"));
        let c = compile_source(Source { path, text: body.clone() });
        let errors: Vec<&str> = c.diagnostics.iter().filter(|d| d.is_error()).map(|d| d.code).collect();
        match info.split_once("error=") {
            Some((_, code)) => {
                assert!(errors.contains(&code.trim()), "example {i} should fail with {code}, got {errors:?}:\n{body}");
                failing += 1;
            }
            None => {
                assert!(errors.is_empty(), "example {i} does not check: {:?}\n{body}", c.diagnostics);
                checked += 1;
            }
        }
    }
    eprintln!("{checked} examples check, {failing} fail as stated");
    assert!(checked >= 10 && failing >= 3, "{checked} clean and {failing} failing examples");
}

#[test]
fn every_diagnostic_code_the_checker_emits_is_documented() {
    let md = std::fs::read_to_string(root().join("docs/reference.md")).unwrap();
    let mut codes = std::collections::BTreeSet::new();
    let mut stack = vec![root().join("src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for (i, _) in text.match_indices('"') {
                    let code = text.get(i + 1..i + 6).unwrap_or("");
                    if text.get(i + 6..i + 7) == Some("\"") && code.len() == 5 && code.starts_with(['E', 'W', 'N']) && code[1..].chars().all(|c| c.is_ascii_digit()) {
                        codes.insert(code.to_string());
                    }
                }
            }
        }
    }
    assert!(codes.len() > 40, "found only {} codes", codes.len());
    let missing: Vec<&String> = codes.iter().filter(|c| !md.contains(&format!("| {c} |"))).collect();
    assert!(missing.is_empty(), "not in docs/reference.md: {missing:?}");
}

/// The reference's table of diagnostics is the one list in `diag::Code`, row for row: a code
/// added, removed or reworded in one place fails here until the other says the same.
#[test]
fn the_reference_table_of_diagnostics_is_the_code_enum() {
    let md = std::fs::read_to_string(root().join("docs/reference.md")).unwrap();
    let rows: Vec<(String, String)> = md
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.strip_prefix("| ")?.strip_suffix(" |")?.split(" | ").collect();
            match cells.as_slice() {
                [code, meaning] if code.len() == 5 && code.starts_with(['E', 'W', 'N']) && code[1..].chars().all(|c| c.is_ascii_digit()) => Some((code.to_string(), meaning.to_string())),
                _ => None,
            }
        })
        .collect();
    let codes: Vec<(String, String)> = roux::diag::Code::ALL.iter().map(|c| (c.as_str().to_string(), c.meaning().to_string())).collect();
    assert_eq!(rows, codes, "docs/reference.md's table of diagnostics differs from src/diag/codes.rs");
}

/// The table of size limits in docs/reference.md is `arith::SIZE_LIMITS`, key for key.
#[test]
fn the_reference_states_every_size_limit() {
    let md = std::fs::read_to_string(root().join("docs/reference.md")).unwrap();
    for (key, max) in roux::arith::SIZE_LIMITS {
        let table = md.split("| key | largest |").nth(1).expect("the table of size limits").split("\n\n").next().unwrap();
        let row = table.lines().find(|l| l.starts_with('|') && l.contains(&format!("`{key}`"))).unwrap_or_else(|| panic!("no row for `{key}`"));
        assert!(row.trim_end().ends_with(&format!("| {max} |")), "`{key}`: the reference says {row:?}, the checker {max}");
    }
}
