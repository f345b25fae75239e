//! The YAML form of a recipe, for tools that generate configs. It is the same AST in another
//! notation, so the same checker checks it, and converting there and back gives the same recipe.
//!
//! ```yaml
//! experiment: demo
//! seed: 1337
//! data corpus:
//!   $: text("../data/tinyshakespeare.txt")   # a constructor's head, in recipe syntax
//!   context: 128
//! model lm:
//!   $: transformer
//!   d_model: 128
//!   ffn: { $: mlp, hidden: 4 * d_model, act: gelu }
//! stage pretrain:
//!   $: train(lm, corpus)
//!   optimizer: { $: adamw, lr: 3e-3, betas: (0.9, 0.95) }
//! ```
//! A mapping is a constructor's block (its head under `$`); a sequence is a list; YAML numbers and
//! booleans are themselves; every other scalar is a recipe value in recipe syntax (`corpus.vocab`,
//! `4 * d_model`, `(0.9, 0.95)`, `3e-3`), so a string literal keeps its quotes: `'"Q: {prompt}"'`.
//! Keys are `key`, `data|model|stage|budget NAME` and `sweep NAME`. Diagnostics point into the
//! YAML file: each key's value is located by a line index of the text (block style; values in
//! flow style point at their key's line).

use serde_yaml::{Mapping, Value};

use super::ast::*;
use crate::diag::{Code, Diagnostic, Span};

// ---------------------------------------------------------------- AST → YAML

/// The first key that occurs twice in one block (a YAML mapping cannot hold it; the checker
/// rejects such recipes anyway, E0102).
pub fn duplicate_key(r: &SourceFile) -> Option<Diagnostic> {
    fn block(b: &Block) -> Option<Diagnostic> {
        let mut seen = std::collections::HashSet::new();
        for e in &b.entries {
            let (key, span, value) = match e {
                Entry::Field(f) => (f.key.name.clone(), f.key.span, &f.value),
                Entry::Decl(d) => (format!("{} {}", d.kind.keyword(), d.name.name), d.name.span, &d.value),
                Entry::Sweep(s) => (format!("sweep {}", s.var.name), s.var.span, &s.values),
            };
            if !seen.insert(key.clone()) {
                return Some(Diagnostic::error(Code::E0102, span, format!("`{key}` appears twice in one block; the YAML form cannot hold both")).with_hint("remove one of the two"));
            }
            if let Some(d) = expr(value) {
                return Some(d);
            }
        }
        None
    }
    fn expr(e: &Expr) -> Option<Diagnostic> {
        match &e.kind {
            ExprKind::Ctor { block: Some(b), .. } => block(b),
            ExprKind::List(v) => v.iter().find_map(expr),
            _ => None,
        }
    }
    block(&r.body)
}

pub fn to_yaml(r: &SourceFile) -> String {
    let mut m = Mapping::new();
    m.insert(Value::String("experiment".into()), Value::String(r.name.clone()));
    entries(&mut m, &r.body);
    serde_yaml::to_string(&Value::Mapping(m)).unwrap_or_default()
}

fn entries(m: &mut Mapping, b: &Block) {
    for e in &b.entries {
        let (k, v) = match e {
            Entry::Field(f) => (f.key.name.clone(), value(&f.value)),
            Entry::Decl(d) => (format!("{} {}", d.kind.keyword(), d.name.name), value(&d.value)),
            Entry::Sweep(s) => (format!("sweep {}", s.var.name), value(&s.values)),
        };
        m.insert(Value::String(k), v);
    }
}

fn text(e: &Expr) -> String {
    let mut s = String::new();
    super::print::expr(&mut s, e, 0);
    s
}

fn value(e: &Expr) -> Value {
    match &e.kind {
        // An integer only when it spells the same (`-0` is the float -0, whose sign a recipe keeps).
        ExprKind::Num { value, text: t } if format!("{value}") == *t => match t.parse::<i64>() {
            Ok(i) if i.to_string() == *t => Value::Number(i.into()),
            _ => Value::Number((*value).into()),
        },
        ExprKind::Bool(b) => Value::Bool(*b),
        ExprKind::List(items) => Value::Sequence(items.iter().map(value).collect()),
        ExprKind::Ctor { path, args, block: Some(b) } => {
            let mut m = Mapping::new();
            if !path.is_empty() {
                let head = Expr { span: e.span, kind: ExprKind::Ctor { path: path.clone(), args: args.clone(), block: None } };
                m.insert(Value::String("$".into()), Value::String(text(&head)));
            }
            entries(&mut m, b);
            Value::Mapping(m)
        }
        _ => Value::String(text(e)),
    }
}

// ---------------------------------------------------------------- YAML → AST

/// Where each key and its value sit in the text.
#[derive(Debug, Default)]
struct Node {
    key: String,
    key_at: usize,
    /// Offset of the value's first character on the key's line, and whether it is quoted.
    value_at: Option<(usize, bool)>,
    children: Vec<Node>,
}

fn index(src: &str) -> Node {
    let mut root = Node::default();
    // Stack of (indent, path of child indices from the root).
    let mut stack: Vec<(usize, Vec<usize>)> = vec![];
    let mut offset = 0;
    for line in src.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let body = line.trim_end_matches(['\n', '\r']);
        let indent = body.len() - body.trim_start().len();
        let t = body.trim_start();
        if t.is_empty() || t.starts_with('#') || t.starts_with('-') || t.starts_with("---") {
            continue;
        }
        let Some(colon) = key_colon(t) else { continue };
        let key = t[..colon].trim().trim_matches(['"', '\'']).to_string();
        let rest = &t[colon + 1..];
        let v = rest.trim_start();
        let value_at = (!v.is_empty() && !v.starts_with('#')).then(|| (start + indent + colon + 1 + (rest.len() - v.len()), v.starts_with(['\'', '"'])));
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let parent_path = stack.last().map(|(_, p)| p.clone()).unwrap_or_default();
        let mut parent = &mut root;
        for &i in &parent_path {
            parent = &mut parent.children[i];
        }
        parent.children.push(Node { key, key_at: start + indent, value_at, children: vec![] });
        let mut path = parent_path;
        path.push(parent.children.len() - 1);
        stack.push((indent, path));
    }
    root
}

/// The `:` that ends a mapping key (followed by a space or the line's end), outside quotes.
pub(super) fn key_colon(t: &str) -> Option<usize> {
    let b = t.as_bytes();
    let mut quote = None;
    for (i, &c) in b.iter().enumerate() {
        match (quote, c) {
            (None, b'\'' | b'"') if i == 0 => quote = Some(c),
            (Some(q), _) if c == q => quote = None,
            (None, b':') if i + 1 == b.len() || b[i + 1] == b' ' => return Some(i),
            _ => {}
        }
    }
    None
}

fn err(span: Span, msg: impl Into<String>) -> Diagnostic {
    Diagnostic::error(Code::E0003, span, msg.into()).with_hint("see the YAML form in the README: mappings are blocks (head under `$`), other scalars are recipe values")
}

pub fn from_yaml(src: &str) -> Result<SourceFile, Diagnostic> {
    super::breaks::check(src, super::breaks::Spelling::Yaml)?;
    super::depth::check_yaml_flow(src)?;
    let v: Value = serde_yaml::from_str(src).map_err(|e| {
        let at = e.location().map_or(0, |l| l.index());
        Diagnostic::error(Code::E0001, Span::new(at, at + 1), format!("YAML syntax error: {e}")).with_hint("the YAML form is one mapping: `experiment: NAME`, then keys and declarations")
    })?;
    let idx = index(src);
    let Value::Mapping(m) = v else { return Err(err(Span::new(0, 1), "a YAML recipe is one mapping")) };
    let mut name = None;
    let mut rest = Mapping::new();
    for (k, v) in m {
        if k.as_str() == Some("experiment") {
            name = Some(v.as_str().map(String::from).ok_or_else(|| err(key_span(&idx, "experiment"), "`experiment` must be the experiment's name"))?);
        } else {
            rest.insert(k, v);
        }
    }
    let name = name.ok_or_else(|| err(Span::new(0, 1), "a YAML recipe needs `experiment: NAME`"))?;
    let name_span = idx.children.iter().find(|n| n.key == "experiment").and_then(|n| n.value_at).map_or(Span::new(0, 1), |(a, _)| Span::new(a, a + name.len()));
    let body = block(&rest, &idx, Span::new(0, src.len()))?;
    Ok(SourceFile { name, name_span, body, yaml: true })
}

/// The roux grammar's identifier rule: a letter or `_`, then letters, digits and `_`.
fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_') && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

fn key_span(n: &Node, key: &str) -> Span {
    n.children.iter().find(|c| c.key == key).map_or(Span::new(n.key_at, n.key_at + 1), |c| Span::new(c.key_at, c.key_at + c.key.len()))
}

fn block(m: &Mapping, at: &Node, span: Span) -> Result<Block, Diagnostic> {
    let mut entries = vec![];
    let empty = Node::default();
    // Each key's source node, found by name once: linear in the document however many keys.
    let mut nodes: std::collections::HashMap<&str, &Node> = std::collections::HashMap::new();
    for c in &at.children {
        nodes.entry(c.key.as_str()).or_insert(c);
    }
    // Each key in roux's spelling, and the first YAML spelling of it.
    let mut spelled: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    for (k, v) in m {
        let Some(k) = k.as_str() else { return Err(err(Span::new(at.key_at, at.key_at + 1), "keys must be strings")) };
        if k == "$" {
            continue;
        }
        let node = nodes.get(k).copied().unwrap_or(&empty);
        let node = if node.key.is_empty() { at } else { node };
        let kspan = Span::new(node.key_at, node.key_at + k.len());
        let words: Vec<&str> = k.split_whitespace().collect();
        let ident = |s: &str, off: usize| Ident { name: s.to_string(), span: Span::new(node.key_at + off, node.key_at + off + s.len()) };
        let entry = match words.as_slice() {
            ["data" | "model" | "stage" | "budget" | "sweep", n] if !is_ident(n) => {
                return Err(err(kspan, format!("`{n}` is not a name: a name is a letter or `_`, then letters, digits and `_` (it may become a directory)")));
            }
            [kw @ ("data" | "model" | "stage" | "budget"), n] => Entry::Decl(Decl {
                kind: match *kw {
                    "data" => DeclKind::Data,
                    "model" => DeclKind::Model,
                    "stage" => DeclKind::Stage,
                    _ => DeclKind::Budget,
                },
                kind_span: Span::new(node.key_at, node.key_at + kw.len()),
                name: ident(n, k.len() - n.len()),
                value: expr(v, node)?,
            }),
            ["sweep", n] => Entry::Sweep(Sweep { var: ident(n, k.len() - n.len()), values: expr(v, node)?, span: kspan }),
            [key] if key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => Entry::Field(Field { key: ident(key, 0), value: expr(v, node)? }),
            _ => return Err(err(kspan, format!("`{k}` is not a key: use `key`, `data|model|stage|budget NAME` or `sweep NAME`"))),
        };
        // Keys YAML tells apart may be one key to roux (`stage  rl` and `stage rl`): refused
        // here, or the layout `roux fmt` writes would keep only one of them.
        let canonical = words.join(" ");
        if let Some(first) = spelled.insert(canonical.clone(), k) {
            return Err(Diagnostic::error(Code::E0102, kspan, format!("`{canonical}` appears twice in one block (as `{}` and `{}`)", first.escape_debug(), k.escape_debug())).with_hint("remove one of the two"));
        }
        entries.push(entry);
    }
    Ok(Block { entries, span })
}

fn expr(v: &Value, at: &Node) -> Result<Expr, Diagnostic> {
    let (pos, quoted) = at.value_at.unwrap_or((at.key_at, false));
    let span = Span::new(pos, pos + 1);
    Ok(match v {
        Value::Number(n) => {
            let value = n.as_f64().unwrap_or(f64::NAN);
            // YAML's `.nan` and `.inf` are numbers to YAML, not to a recipe.
            if !value.is_finite() {
                return Err(err(span, format!("`{n}` is not a finite number")).into_hint("give a finite number, such as `0.5` or `1e-3`"));
            }
            let text = match n.as_i64() {
                Some(i) => i.to_string(),
                None => format!("{value}"),
            };
            Expr { span: Span::new(pos, pos + text.len()), kind: ExprKind::Num { value, text } }
        }
        Value::Bool(b) => Expr { span, kind: ExprKind::Bool(*b) },
        // A day (`date: 2025-03-07`) is one to a YAML reader, not a subtraction.
        Value::String(s) if s.len() == 10 && s.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() }) => {
            Expr { span: Span::new(pos, pos + s.len() + 2 * quoted as usize), kind: ExprKind::Str(s.clone()) }
        }
        // A quoted YAML string that is no recipe value is the string itself (YAML's own
        // spelling: `template: "Q: {prompt}\nA: "`); a plain one is recipe syntax.
        Value::String(s) => match super::parse_expr(s, pos + quoted as usize) {
            Err(_) if quoted => Expr { span: Span::new(pos, pos + s.len() + 2), kind: ExprKind::Str(s.clone()) },
            r => r?,
        },
        Value::Sequence(items) => Expr { span, kind: ExprKind::List(items.iter().map(|i| expr(i, at)).collect::<Result<_, _>>()?) },
        Value::Mapping(m) => {
            let (path, args) = match m.get("$") {
                None => (vec![], None),
                Some(Value::String(h)) => {
                    let head_node = at.children.iter().find(|c| c.key == "$").unwrap_or(at);
                    let (hp, hq) = head_node.value_at.unwrap_or((head_node.key_at, false));
                    match super::parse_expr(h, hp + hq as usize)?.kind {
                        ExprKind::Ctor { path, args, block: None } => (path, args),
                        _ => return Err(err(span, format!("`$: {h}` is not a constructor head such as `train(lm, corpus)`"))),
                    }
                }
                Some(_) => return Err(err(span, "`$` holds a constructor head as text, such as `adamw`")),
            };
            let b = block(m, at, span)?;
            Expr { span, kind: ExprKind::Ctor { path, args, block: Some(b) } }
        }
        Value::Null => return Err(err(span, "an empty value").into_hint("give a value, or remove the key")),
        Value::Tagged(_) => return Err(err(span, "YAML tags are not part of the recipe form")),
    })
}

trait IntoHint {
    fn into_hint(self, h: &str) -> Diagnostic;
}

impl IntoHint for Diagnostic {
    fn into_hint(mut self, h: &str) -> Diagnostic {
        self.hint = Some(h.to_string());
        self
    }
}
