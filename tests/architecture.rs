//! The whiteboard everyone can run: the rooms of src/ and what each may import
//! (docs/architecture.md), checked by reading the source. Each rule fails naming the file, the
//! line and the rule it breaks.
//!
//! A reference is any `crate::…`, `super::…` or `self::…` path outside a comment (a `use` line or
//! a path written inline), resolved to the module file it names; braces are expanded one level.

use regex::Regex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path, `["run", "kit", "lifecycle"]`; the crate root is empty.
type Module = Vec<String>;

struct File {
    path: PathBuf,
    module: Module,
    text: String,
}

/// Every .rs file of the library (src/ less main.rs and cli/, the binary's edge).
fn library(root: &Path) -> Vec<File> {
    let mut out = vec![];
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(root).unwrap();
            let mut module: Module = rel.with_extension("").components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            out.push(File { text: std::fs::read_to_string(&p).unwrap(), path: p, module });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn is_binary_edge(f: &File) -> bool {
    matches!(f.module.first().map(String::as_str), Some("main" | "cli"))
}

/// Code lines, numbered from 1, with `//` comments removed (a `//` inside a string is rare here
/// and only hides a reference, never invents one).
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l.find("//").map_or(l, |c| &l[..c])))
}

/// The module paths a line refers to, as written (`crate::a::b`, `super::x`), braces expanded.
fn paths_in(line: &str) -> Vec<String> {
    let re = Regex::new(r"\b(crate|super|self)((?:::(?:super|[A-Za-z_][A-Za-z0-9_]*))*)(::\{([^{}]*)\})?").unwrap();
    let mut out = vec![];
    for c in re.captures_iter(line) {
        let head = format!("{}{}", &c[1], &c[2]);
        match c.get(4) {
            Some(inner) => {
                for item in inner.as_str().split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let item = item.split(" as ").next().unwrap().trim();
                    out.push(if item == "self" { head.clone() } else { format!("{head}::{item}") });
                }
            }
            None => out.push(head),
        }
    }
    out
}

/// The module a path names, resolved against the file's module: the longest prefix that is a
/// module of the crate.
fn resolve(from: &File, path: &str, modules: &BTreeSet<Module>) -> Option<Module> {
    let mut parts = path.split("::");
    let mut base: Module = match parts.next()? {
        "crate" => vec![],
        "self" => self_module(from),
        "super" => {
            let mut m = self_module(from);
            m.pop()?;
            m
        }
        _ => return None,
    };
    let mut best = base.clone();
    for p in parts {
        if p == "super" {
            base.pop()?;
            best = base.clone();
            continue;
        }
        base.push(p.to_string());
        if modules.contains(&base) {
            best = base.clone();
        } else {
            break;
        }
    }
    Some(best)
}

/// The module `self` is in a file: the file's own module.
fn self_module(f: &File) -> Module {
    f.module.clone()
}

fn under(m: &Module, prefix: &[&str]) -> bool {
    m.len() >= prefix.len() && m.iter().zip(prefix).all(|(a, b)| a == b)
}

struct Reference {
    file: PathBuf,
    line: usize,
    from: Module,
    to: Module,
}

fn references(files: &[File]) -> Vec<Reference> {
    let modules: BTreeSet<Module> = files.iter().map(|f| f.module.clone()).collect();
    let mut out = vec![];
    for f in files.iter().filter(|f| !is_binary_edge(f)) {
        for (n, line) in code_lines(&f.text) {
            for p in paths_in(line) {
                if let Some(to) = resolve(f, &p, &modules) {
                    out.push(Reference { file: f.path.clone(), line: n, from: f.module.clone(), to });
                }
            }
        }
    }
    out
}

/// The rules on imports between rooms; each returns why a reference breaks it.
fn import_rule(r: &Reference) -> Option<&'static str> {
    let (from, to) = (&r.from, &r.to);
    let run_room = |m: &Module| m.get(1).cloned().filter(|_| under(m, &["run"]));
    if under(from, &["hf"]) && !(under(to, &["hf"]) || under(to, &["recipe"]) || under(to, &["arith"])) {
        return Some("hf/ imports only recipe/ and arith/ (the checkpoint mapping is pure)");
    }
    if under(from, &["run", "model"]) && under(to, &["run"]) && !under(to, &["run", "model"]) {
        return Some("run/model imports nothing else in run/");
    }
    if under(from, &["run", "kit"]) && (under(to, &["run", "stages"]) || under(to, &["run", "tools"]) || *to == ["run"]) {
        return Some("run/kit imports run/model, never run/stages, run/tools or the runner");
    }
    if under(from, &["run", "stages"]) && under(to, &["run", "stages"]) && from.len() > 2 && to.len() > 2 && from[2] != to[2] {
        return Some("a stage never imports another stage");
    }
    if matches!(run_room(from).as_deref(), Some("stages" | "tools" | "kit" | "model")) && *to == ["run"] {
        return Some("the rooms of run/ do not import the runner (run/mod.rs)");
    }
    if under(from, &["run", "tools"]) && under(to, &["run", "stages"]) {
        return Some("run/tools reads finished runs through run/kit, never run/stages");
    }
    if !under(from, &["run"]) && under(to, &["run"]) {
        return Some("the front end (everything outside run/) never imports run/");
    }
    // The pipeline in order: each stage imports only the stages before it.
    const PIPELINE: [&str; 4] = ["syntax", "check", "lower", "plan"];
    let stage = |m: &Module| m.first().and_then(|s| PIPELINE.iter().position(|p| p == s));
    if let (Some(a), Some(b)) = (stage(from), stage(to)) {
        if b > a {
            return Some("a stage of the pipeline imports only the stages before it (syntax < check < lower < plan)");
        }
    }
    None
}

#[test]
fn rooms_import_only_what_their_rule_allows() {
    let files = library(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let broken: Vec<String> = references(&files)
        .iter()
        .filter_map(|r| import_rule(r).map(|why| format!("{}:{}: {} → {}: {why}", r.file.display(), r.line, r.from.join("::"), r.to.join("::"))))
        .collect();
    assert!(broken.is_empty(), "imports that break the architecture (docs/architecture.md):\n{}", broken.join("\n"));
}

#[test]
fn the_front_end_never_names_libtorch() {
    let files = library(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let re = Regex::new(r"\btch::").unwrap();
    let broken: Vec<String> = files
        .iter()
        .filter(|f| !is_binary_edge(f) && !under(&f.module, &["run"]) && !f.module.is_empty())
        .flat_map(|f| code_lines(&f.text).filter(|(_, l)| re.is_match(l)).map(move |(n, _)| format!("{}:{n}", f.path.display())))
        .collect();
    assert!(broken.is_empty(), "the front end builds without libtorch; these lines name `tch`:\n{}", broken.join("\n"));
}

/// Among the children of every module (files and folders), the references between them form no
/// circle; a module and its own sub-modules count as one.
#[test]
fn no_import_circle_anywhere() {
    let files = library(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    // Per parent module: edges child → child, with one reference as the example.
    let mut edges: BTreeMap<Module, BTreeMap<(String, String), String>> = BTreeMap::new();
    for r in references(&files) {
        let common = r.from.iter().zip(&r.to).take_while(|(a, b)| a == b).count();
        if common < r.from.len() && common < r.to.len() {
            let (a, b) = (r.from[common].clone(), r.to[common].clone());
            edges.entry(r.from[..common].to_vec()).or_default().entry((a, b)).or_insert_with(|| format!("{}:{}", r.file.display(), r.line));
        }
    }
    let mut circles = vec![];
    for (parent, es) in &edges {
        if let Some(cycle) = find_cycle(es) {
            let shown: Vec<String> = cycle.windows(2).map(|w| format!("{} → {} ({})", w[0], w[1], es[&(w[0].clone(), w[1].clone())])).collect();
            circles.push(format!("in `crate::{}`: {}", parent.join("::"), shown.join(", ")));
        }
    }
    assert!(circles.is_empty(), "import circles (docs/architecture.md):\n{}", circles.join("\n"));
}

/// A circle in a directed graph, as its nodes with the first repeated at the end.
fn find_cycle(edges: &BTreeMap<(String, String), String>) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        next.entry(a).or_default().push(b);
    }
    // 0 unseen, 1 on the current path, 2 done.
    fn visit<'a>(n: &'a str, next: &BTreeMap<&'a str, Vec<&'a str>>, state: &mut BTreeMap<&'a str, u8>, path: &mut Vec<&'a str>) -> Option<Vec<String>> {
        state.insert(n, 1);
        path.push(n);
        for &m in next.get(n).map(Vec::as_slice).unwrap_or_default() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let start = path.iter().position(|&p| p == m).unwrap();
                    let mut c: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                    c.push(m.to_string());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, next, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n, 2);
        None
    }
    let mut state = BTreeMap::new();
    for &n in next.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, &next, &mut state, &mut vec![]) {
                return Some(c);
            }
        }
    }
    None
}

/// Only the binary's edge (main.rs, cli/) and the log renderer (logging.rs) write to the terminal.
#[test]
fn only_the_cli_prints() {
    let files = library(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let re = Regex::new(r"\b(println|print|eprintln|eprint|dbg)!").unwrap();
    let broken: Vec<String> = files
        .iter()
        .filter(|f| !is_binary_edge(f) && f.module != ["logging"])
        .flat_map(|f| code_lines(&f.text).filter(|(_, l)| re.is_match(l)).map(move |(n, _)| format!("{}:{n}", f.path.display())))
        .collect();
    assert!(broken.is_empty(), "only the CLI prints (return data, or log through `tracing`):\n{}", broken.join("\n"));
}

/// Files of at most 400 lines; functions of at most 120, except a stage's loop (run/stages/).
#[test]
fn files_and_functions_stay_small() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = library(&root);
    all.extend(["main.rs"].iter().map(|f| File { path: root.join(f), module: vec![], text: std::fs::read_to_string(root.join(f)).unwrap() }));
    let fn_re = Regex::new(r"^(\s*)(pub(\([a-z]+\))? )?(const )?(unsafe )?fn [a-z_0-9]+").unwrap();
    let mut broken = vec![];
    for f in &all {
        let lines: Vec<&str> = f.text.lines().collect();
        if lines.len() > 400 {
            broken.push(format!("{}: {} lines (at most 400)", f.path.display(), lines.len()));
        }
        if under(&f.module, &["run", "stages"]) {
            continue;
        }
        for (i, l) in lines.iter().enumerate() {
            let Some(c) = fn_re.captures(l) else { continue };
            if l.trim_end().ends_with('}') || l.trim_end().ends_with(';') {
                continue; // one line, or a declaration
            }
            let close = format!("{}}}", &c[1]);
            let len = lines[i + 1..].iter().position(|m| *m == close).map_or(0, |p| p + 2);
            if len > 120 {
                broken.push(format!("{}:{}: a function of {len} lines (at most 120)", f.path.display(), i + 1));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// Names that explain themselves: no two public types of the library share a name (a reader
/// should never have to ask which `Recipe` or which `AdamW` a line means).
#[test]
fn no_two_types_share_a_name() {
    let files = library(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let re = Regex::new(r"^\s*pub (?:struct|enum|trait|type) ([A-Z][A-Za-z0-9_]*)").unwrap();
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in &files {
        for (n, l) in code_lines(&f.text) {
            if let Some(c) = re.captures(l) {
                seen.entry(c[1].to_string()).or_default().push(format!("{}:{n}", f.path.display()));
            }
        }
    }
    let twice: Vec<String> = seen.iter().filter(|(_, at)| at.len() > 1).map(|(name, at)| format!("`{name}`: {}", at.join(", "))).collect();
    assert!(twice.is_empty(), "types that share a name:\n{}", twice.join("\n"));
}

/// The rules catch what they are for: a stage importing a stage, the model importing the kit, a
/// sibling circle.
#[test]
fn the_rules_catch_what_they_are_for() {
    let f = |module: &[&str]| File { path: PathBuf::from("x.rs"), module: module.iter().map(|s| s.to_string()).collect(), text: String::new() };
    let modules: BTreeSet<Module> = [vec!["check"], vec!["plan"], vec!["run"], vec!["run", "stages"], vec!["run", "stages", "ppo"], vec!["run", "stages", "reward"], vec!["run", "kit"], vec!["run", "model"]]
        .into_iter()
        .map(|m| m.into_iter().map(String::from).collect())
        .collect();
    let reference = |from: &File, path: &str| Reference { file: from.path.clone(), line: 1, from: from.module.clone(), to: resolve(from, path, &modules).unwrap() };
    let ppo = f(&["run", "stages", "ppo"]);
    assert_eq!(paths_in("use super::reward::RewardModel;"), vec!["super::reward::RewardModel"]);
    assert_eq!(import_rule(&reference(&ppo, "super::reward::RewardModel")), Some("a stage never imports another stage"));
    assert_eq!(import_rule(&reference(&ppo, "crate::run::kit::lifecycle")), None);
    assert_eq!(import_rule(&reference(&f(&["run", "model"]), "crate::run::kit::files")), Some("run/model imports nothing else in run/"));
    assert_eq!(import_rule(&reference(&f(&["check"]), "crate::run::model")), Some("the front end (everything outside run/) never imports run/"));
    assert_eq!(import_rule(&reference(&f(&["check"]), "crate::plan")), Some("a stage of the pipeline imports only the stages before it (syntax < check < lower < plan)"));
    assert_eq!(paths_in("use crate::run::kit::{device, hash as h, self};"), vec!["crate::run::kit::device", "crate::run::kit::hash", "crate::run::kit"]);
    let circle: BTreeMap<(String, String), String> = [("a", "b"), ("b", "c"), ("c", "a")].iter().map(|(x, y)| ((x.to_string(), y.to_string()), String::new())).collect();
    assert_eq!(find_cycle(&circle), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    let line: BTreeMap<(String, String), String> = [("a", "b"), ("b", "c")].iter().map(|(x, y)| ((x.to_string(), y.to_string()), String::new())).collect();
    assert_eq!(find_cycle(&line), None);
}
