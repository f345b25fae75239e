//! `--set path=value`: command-line overrides, applied to the AST before checking so that they are
//! typed and checked like the file itself (an unknown key gets the same did-you-mean). Their text
//! point into the `--set` argument (`relocate`), so errors show the override.

use super::ast::*;
use crate::diag::suggest::did_you_mean;
use crate::diag::{Code, Diagnostic, Span};

/// Point a diagnostic about an override into its `--set` argument. Overrides' spans count on past
/// the file's `base` bytes as if each followed it as a line `\n--set PATH=VALUE`.
pub fn relocate(d: &mut Diagnostic, sets: &[String], base: usize) {
    let mut at = base;
    for s in sets {
        let line = at + 1; // where `--set …` starts
        at += "\n--set ".len() + s.len();
        if d.span.start >= line && d.span.start <= at {
            d.origin = Some(format!("--set {s}"));
            d.span = crate::diag::Span::new(d.span.start - line, d.span.end.min(at).max(d.span.start) - line);
            return;
        }
    }
}

/// Apply `sets` to `r`. `base` is the length of the file's text: override `i` sits at
/// `base + Σ earlier lines + "\n--set ".len()` in the combined source.
pub fn apply(r: &mut SourceFile, sets: &[String], base: usize) -> Vec<Diagnostic> {
    let mut diags = vec![];
    let mut at = base;
    for s in sets {
        let start = at + "\n--set ".len();
        at += "\n--set ".len() + s.len();
        if let Err(d) = apply_one(r, s, start) {
            diags.push(d);
        }
    }
    diags
}

fn apply_one(r: &mut SourceFile, set: &str, start: usize) -> Result<(), Diagnostic> {
    let Some(eq) = set.find('=') else {
        return Err(Diagnostic::error(Code::E0140, Span::new(start, start + set.len()), format!("`--set {set}` has no `=`"))
            .with_hint("write `--set lm.d_model=256` or `--set pretrain.optimizer.lr=1e-3`"));
    };
    // Path segments with their spans.
    let mut segs: Vec<Ident> = vec![];
    let mut pos = 0;
    for part in set[..eq].split('.') {
        let name = part.trim();
        let lead = part.len() - part.trim_start().len();
        let span = Span::new(start + pos + lead, start + pos + lead + name.len().max(1));
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(Diagnostic::error(Code::E0140, span, format!("`{name}` is not a key name")).with_hint("a path is names joined by dots: `pretrain.optimizer.lr`"));
        }
        segs.push(Ident { name: name.to_string(), span });
        pos += part.len() + 1;
    }
    let value = super::parse_expr(&set[eq + 1..], start + eq + 1)?;

    // A declaration's name first, else a top-level key (`seed`).
    let decl_names: Vec<String> = r.body.entries.iter().filter_map(|e| if let Entry::Decl(d) = e { Some(d.name.name.clone()) } else { None }).collect();
    let decl = r.body.entries.iter_mut().find_map(|e| match e {
        Entry::Decl(d) if d.name.name == segs[0].name => Some(d),
        _ => None,
    });
    let Some(decl) = decl else {
        if segs.len() == 1 {
            set_field(&mut r.body, &segs[0], value);
            return Ok(());
        }
        let mut d = Diagnostic::error(Code::E0110, segs[0].span, format!("`--set`: no declaration named `{}`", segs[0].name));
        d = match did_you_mean(&segs[0].name, decl_names.iter().map(|s| s.as_str())) {
            Some(s) => d.with_hint(format!("did you mean `{s}`?")),
            None => d.with_hint(format!("declared: {}", decl_names.join(", "))),
        };
        return Err(d);
    };
    if segs.len() == 1 {
        decl.value = value;
        return Ok(());
    }
    let mut block = ctor_block(&mut decl.value);
    let mut owner = segs[0].name.clone();
    for seg in &segs[1..segs.len() - 1] {
        let keys: Vec<String> = block.fields().map(|f| f.key.name.clone()).collect();
        let Some(f) = block.entries.iter_mut().find_map(|e| match e {
            Entry::Field(f) if f.key.name == seg.name => Some(f),
            _ => None,
        }) else {
            let mut d = Diagnostic::error(Code::E0100, seg.span, format!("`{owner}` has no `{}` to set inside", seg.name));
            d = match did_you_mean(&seg.name, keys.iter().map(|s| s.as_str())) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint(format!("to add it, set it whole: `--set {owner}.{}='adamw {{ lr = 1e-3 }}'`", seg.name)),
            };
            return Err(d);
        };
        if !matches!(&f.value.kind, ExprKind::Ctor { path, .. } if !path.is_empty()) {
            return Err(Diagnostic::error(Code::E0120, seg.span, format!("`{owner}.{}` is a value, not a block", seg.name))
                .with_hint(format!("set it directly: `--set {owner}.{}=…`", seg.name)));
        }
        owner = format!("{owner}.{}", seg.name);
        block = ctor_block(&mut f.value);
    }
    set_field(block, &segs[segs.len() - 1], value);
    Ok(())
}

/// The block of a constructor value, created empty when it has none (`ppo(…)` → `ppo(…) { }`).
fn ctor_block(e: &mut Expr) -> &mut Block {
    let span = e.span;
    match &mut e.kind {
        ExprKind::Ctor { block, .. } => block.get_or_insert_with(|| Block { entries: vec![], span: Span::new(span.end, span.end) }),
        _ => unreachable!("callers pass constructors"),
    }
}

/// Replace `key`'s value, or add the key (the checker then judges whether it exists).
fn set_field(b: &mut Block, key: &Ident, value: Expr) {
    for e in &mut b.entries {
        if let Entry::Field(f) = e {
            if f.key.name == key.name {
                f.value = value;
                return;
            }
        }
    }
    b.entries.push(Entry::Field(Field { key: key.clone(), value }));
}
