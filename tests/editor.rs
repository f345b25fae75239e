//! The TextMate grammar in editors/ highlights every shipped recipe: a small TextMate engine
//! (match with captures, begin/end with nested patterns, includes; earliest match wins, ties to
//! the first pattern) runs it, and every non-blank character must get a scope.

use regex::Regex;
use serde_json::Value;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

enum Rule {
    Match { re: Regex, name: Option<String>, captures: Vec<(usize, String)> },
    Region { begin: Regex, end: Regex, name: String, inner: Vec<Rule> },
}

fn compile(v: &Value, repo: &Value) -> Vec<Rule> {
    let mut out = vec![];
    for p in v.as_array().unwrap() {
        if let Some(inc) = p["include"].as_str() {
            let r = &repo[inc.trim_start_matches('#')];
            if r["patterns"].is_array() && r["match"].is_null() && r["begin"].is_null() {
                out.extend(compile(&r["patterns"], repo));
            } else {
                out.extend(compile(&Value::Array(vec![r.clone()]), repo));
            }
            continue;
        }
        let re = |k: &str| Regex::new(&format!("(?m){}", p[k].as_str().unwrap())).unwrap_or_else(|e| panic!("{k}: {e}"));
        if p["begin"].is_string() {
            let inner = if p["patterns"].is_array() { compile(&p["patterns"], repo) } else { vec![] };
            out.push(Rule::Region { begin: re("begin"), end: re("end"), name: p["name"].as_str().unwrap().into(), inner });
        } else {
            let captures = p["captures"].as_object().map_or(vec![], |c| c.iter().map(|(k, v)| (k.parse().unwrap(), v["name"].as_str().unwrap().to_string())).collect());
            out.push(Rule::Match { re: re("match"), name: p["name"].as_str().map(String::from), captures });
        }
    }
    out
}

/// Scope every byte of `text[from..to]` can get; returns where scanning stopped.
fn scan(rules: &[Rule], text: &str, mut pos: usize, stop: Option<&Regex>, scopes: &mut [Option<String>]) -> usize {
    while pos < text.len() {
        let end_at = stop.and_then(|s| s.find_at(text, pos));
        let mut best: Option<(usize, usize)> = None; // (start, rule index)
        for (i, r) in rules.iter().enumerate() {
            let m = match r {
                Rule::Match { re, .. } => re.find_at(text, pos),
                Rule::Region { begin, .. } => begin.find_at(text, pos),
            };
            if let Some(m) = m.filter(|m| m.end() > m.start()) {
                if best.is_none_or(|(s, _)| m.start() < s) {
                    best = Some((m.start(), i));
                }
            }
        }
        if let Some(e) = end_at {
            if best.is_none_or(|(s, _)| e.start() <= s) {
                return e.end();
            }
        }
        let Some((_, i)) = best else { return text.len() };
        match &rules[i] {
            Rule::Match { re, name, captures } => {
                let c = re.captures_at(text, pos).unwrap();
                let m = c.get(0).unwrap();
                for b in m.start()..m.end() {
                    if let Some(n) = name {
                        scopes[b] = Some(n.clone());
                    }
                }
                for (k, n) in captures {
                    if let Some(g) = c.get(*k) {
                        (g.start()..g.end()).for_each(|b| scopes[b] = Some(n.clone()));
                    }
                }
                pos = m.end();
            }
            Rule::Region { begin, end, name, inner } => {
                let m = begin.find_at(text, pos).unwrap();
                let stop_at = scan(inner, text, m.end(), Some(end), scopes);
                for s in scopes.iter_mut().take(stop_at).skip(m.start()) {
                    if s.is_none() {
                        *s = Some(name.clone());
                    }
                }
                pos = stop_at;
            }
        }
    }
    pos
}

fn highlight(text: &str) -> Vec<Option<String>> {
    let g: Value = serde_json::from_str(&std::fs::read_to_string(root().join("editors/roux.tmLanguage.json")).unwrap()).unwrap();
    assert_eq!(g["scopeName"], "source.roux");
    let rules = compile(&g["patterns"], &g["repository"]);
    let mut scopes = vec![None; text.len()];
    scan(&rules, text, 0, None, &mut scopes);
    scopes
}

#[test]
fn every_shipped_recipe_is_highlighted_everywhere() {
    let mut files = 0;
    for dir in ["recipes", "tests/fixtures", "tests/bad"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_none_or(|x| x != "roux") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let scopes = highlight(&text);
            for (i, c) in text.char_indices() {
                if !c.is_whitespace() && scopes[i].is_none() {
                    let line = text[..i].matches('\n').count() + 1;
                    panic!("{}:{line}: `{c}` gets no scope", p.display());
                }
            }
            files += 1;
        }
    }
    assert!(files > 80, "{files} files");
}

#[test]
fn tokens_get_the_scopes_an_editor_colours() {
    let text = "// note\nexperiment \"x\" {\n  model lm = transformer { d_model = 2 * 64, tie = true }\n  s = \"a\\\"b\" /* c */\n}\n";
    let s = highlight(text);
    let at = |needle: &str| s[text.find(needle).unwrap()].clone().unwrap();
    assert_eq!(at("// note"), "comment.line.double-slash.roux");
    assert_eq!(at("experiment"), "keyword.control.roux");
    assert_eq!(at("model"), "storage.type.roux");
    assert_eq!(at("lm"), "entity.name.type.roux");
    assert_eq!(at("transformer"), "entity.name.function.roux");
    assert_eq!(at("d_model"), "variable.other.property.roux");
    assert_eq!(at("64"), "constant.numeric.roux");
    assert_eq!(at("true"), "constant.language.roux");
    assert_eq!(at("\\\""), "constant.character.escape.roux");
    assert_eq!(at("/* c */"), "comment.block.roux");
}
