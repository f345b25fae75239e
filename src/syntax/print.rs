//! AST → canonical recipe text. Parsing the output gives back the same AST (modulo spans).

use super::ast::*;

pub fn print(r: &Recipe) -> String {
    let mut out = format!("experiment {} ", quote(&r.name));
    block(&mut out, &r.body, 0);
    out.push('\n');
    out
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").replace('\t', "\\t"))
}

fn block(out: &mut String, b: &Block, indent: usize) {
    if b.entries.is_empty() {
        out.push_str("{}");
        return;
    }
    out.push_str("{\n");
    for e in &b.entries {
        out.push_str(&"  ".repeat(indent + 1));
        match e {
            Entry::Field(f) => {
                out.push_str(&f.key.name);
                out.push_str(" = ");
                expr(out, &f.value, indent + 1);
            }
            Entry::Decl(d) => {
                out.push_str(d.kind.keyword());
                out.push(' ');
                out.push_str(&d.name.name);
                match &d.value.kind {
                    ExprKind::Ctor { path, args: None, block: Some(b) } if path.is_empty() => {
                        out.push(' ');
                        block(out, b, indent + 1);
                    }
                    _ => {
                        out.push_str(" = ");
                        expr(out, &d.value, indent + 1);
                    }
                }
            }
            Entry::Sweep(s) => {
                out.push_str("sweep ");
                out.push_str(&s.var.name);
                out.push_str(" in ");
                expr(out, &s.values, indent + 1);
            }
        }
        out.push('\n');
    }
    out.push_str(&"  ".repeat(indent));
    out.push('}');
}

fn list(out: &mut String, items: &[Expr], indent: usize) {
    for (i, e) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        expr(out, e, indent);
    }
}

pub fn expr(out: &mut String, e: &Expr, indent: usize) {
    match &e.kind {
        ExprKind::Num { text, .. } => out.push_str(text),
        ExprKind::Str(s) => out.push_str(&quote(s)),
        ExprKind::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        ExprKind::List(items) => {
            out.push('[');
            list(out, items, indent);
            out.push(']');
        }
        ExprKind::Tuple(items) => {
            out.push('(');
            list(out, items, indent);
            out.push(')');
        }
        ExprKind::Paren(inner) => {
            out.push('(');
            expr(out, inner, indent);
            out.push(')');
        }
        ExprKind::Neg(inner) => {
            out.push('-');
            expr(out, inner, indent);
        }
        ExprKind::Binary(op, a, b) => {
            expr(out, a, indent);
            out.push_str(&format!(" {} ", op.symbol()));
            expr(out, b, indent);
        }
        ExprKind::Ctor { path, args, block: blk } => {
            out.push_str(&Expr::path_string(path));
            if let Some(args) = args {
                out.push('(');
                for (i, a) in args.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    if let Some(n) = &a.name {
                        out.push_str(&n.name);
                        out.push_str(" = ");
                    }
                    expr(out, &a.value, indent);
                }
                out.push(')');
            }
            if let Some(b) = blk {
                out.push(' ');
                block(out, b, indent);
            }
        }
    }
}
