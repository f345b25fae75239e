//! Evaluating expressions inside a scope of nested blocks: numbers, arithmetic, references.
//!
//! A bare name resolves to the nearest enclosing block's field of that name (`hidden = 4 * d_model`
//! inside the transformer's `ffn` block); a dotted name `x.key` to an attribute of the declaration
//! `x` (`corpus.vocab`). Cycles between fields are reported, not followed forever.

use crate::diag::suggest::did_you_mean;
use super::Checker;
use crate::diag::{Code, Diagnostic, Span};
use crate::syntax::ast::*;

/// Blocks from the outermost (the experiment body) to the innermost.
pub type Scope<'a> = Vec<&'a Block>;

pub fn describe(e: &Expr) -> &'static str {
    match &e.kind {
        ExprKind::Num { .. } | ExprKind::Neg(_) | ExprKind::Binary(..) => "a number",
        ExprKind::Str(_) => "a string",
        ExprKind::Bool(_) => "a boolean",
        ExprKind::List(_) => "a list",
        ExprKind::Tuple(_) => "a tuple",
        ExprKind::Paren(inner) => describe(inner),
        ExprKind::Ctor { args: None, block: None, .. } => "a name",
        ExprKind::Ctor { .. } => "a constructor",
    }
}

impl<'a> Checker<'a> {
    /// Evaluate a numeric expression; None when an error was reported.
    pub fn eval_num(&mut self, e: &'a Expr, scope: &Scope<'a>) -> Option<f64> {
        let v = match &e.kind {
            ExprKind::Num { value, text } => {
                if !value.is_finite() {
                    let shown: String = if text.chars().count() > 40 { text.chars().take(20).chain("…".chars()).collect() } else { text.clone() };
                    self.error(Diagnostic::error(Code::E0121, e.span, format!("number `{shown}` is out of range"))
                        .with_hint("numbers must be finite and below about 1.8e308"));
                    return None;
                }
                *value
            }
            ExprKind::Paren(inner) => self.eval_num(inner, scope)?,
            ExprKind::Neg(inner) => -self.eval_num(inner, scope)?,
            ExprKind::Binary(op, a, b) => {
                let x = self.eval_num(a, scope);
                let y = self.eval_num(b, scope);
                let (x, y) = (x?, y?);
                let v = match op {
                    BinOp::Add => x + y,
                    BinOp::Sub => x - y,
                    BinOp::Mul => x * y,
                    BinOp::Div => {
                        if y == 0.0 {
                            self.error(Diagnostic::error(Code::E0122, b.span, "division by zero").with_hint("this part of the expression evaluates to 0"));
                            return None;
                        }
                        x / y
                    }
                    BinOp::Pow => x.powf(y),
                };
                if !v.is_finite() {
                    self.error(Diagnostic::error(Code::E0121, e.span, "this arithmetic overflows")
                        .with_hint("the result must be a finite number"));
                    return None;
                }
                v
            }
            ExprKind::Ctor { path, args: None, block: None } => return self.resolve_num(path, e.span, scope),
            _ => {
                self.error(Diagnostic::error(Code::E0120, e.span, format!("expected a number, found {}", describe(e))).with_hint("write a number such as `128`, `3e-4` or `20M`, or arithmetic on other keys"));
                return None;
            }
        };
        Some(v)
    }

    fn resolve_num(&mut self, path: &'a [Ident], span: Span, scope: &Scope<'a>) -> Option<f64> {
        let head = &path[0];
        if path.len() == 1 {
            let mut own = None;
            for depth in (0..scope.len()).rev() {
                if let Some(f) = scope[depth].field(&head.name) {
                    // `d_model = d_model`: a key's own name in its own value means the
                    // enclosing scope's (a sweep variable, an outer key).
                    if self.visiting.last() == Some(&f.key.span.start) {
                        own = Some(f);
                        continue;
                    }
                    return self.eval_field(f, &scope[..=depth].to_vec());
                }
            }
            if let Some(f) = own {
                self.error(Diagnostic::error(Code::E0112, f.key.span, format!("`{}` is defined in terms of itself", f.key.name))
                    .with_hint("no enclosing block defines it either; give a number"));
                return None;
            }
            if let Some(d) = self.decl(&head.name) {
                let kind = d.kind.keyword();
                self.error(Diagnostic::error(Code::E0120, span, format!("`{}` is a {kind}, not a number", head.name))
                    .with_hint(format!("use one of its attributes, such as `{}.{}`", head.name, self.example_attr(d))));
                return None;
            }
            let keys: Vec<&str> = if self.suggestions_left() { scope.iter().flat_map(|b| b.fields().map(|f| f.key.name.as_str())).collect() } else { vec![] };
            let mut d = Diagnostic::error(Code::E0110, head.span, format!("unknown name `{}`", head.name));
            d = match self.suggest_decl(&head.name, None, &keys) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint("a name refers to a key of an enclosing block or to a declared data set, model or stage"),
            };
            self.error(d);
            return None;
        }
        let Some(decl) = self.decl(&head.name) else {
            let mut d = Diagnostic::error(Code::E0110, head.span, format!("unknown name `{}`", head.name));
            d = match self.suggest_decl(&head.name, None, &[]) {
                Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                None => d.with_hint("a dotted name starts with a declared data set, model or stage"),
            };
            self.error(d);
            return None;
        };
        if path.len() > 2 {
            self.error(Diagnostic::error(Code::E0111, path[2].span, "attributes do not nest this deep")
                .with_hint(format!("use `{}.{}`", head.name, path[1].name)));
            return None;
        }
        self.attribute(decl, &path[1])
    }

    /// Evaluate a block field, guarding against `a = b, b = a`.
    pub fn eval_field(&mut self, f: &'a Field, scope: &Scope<'a>) -> Option<f64> {
        let key = f.key.span.start;
        if self.visiting.contains(&key) {
            self.error(Diagnostic::error(Code::E0112, f.key.span, format!("`{}` is defined in terms of itself", f.key.name))
                .with_hint("break the cycle by giving one of these values as a number"));
            return None;
        }
        self.visiting.push(key);
        let v = self.eval_num(&f.value, scope);
        self.visiting.pop();
        v
    }

    /// A bare symbol such as `gelu`, one of `allowed`.
    pub fn eval_sym(&mut self, e: &'a Expr, what: &str, allowed: &[&'static str], scope: Option<&Scope<'a>>) -> Option<&'static str> {
        let Some([id]) = e.as_path() else {
            self.error(Diagnostic::error(Code::E0120, e.span, format!("expected {what} ({}), found {}", allowed.join(" | "), describe(e))).with_hint(format!("write one bare name, such as `{what} = {}`", allowed[0])));
            return None;
        };
        if let Some(a) = allowed.iter().find(|a| **a == id.name) {
            return Some(a);
        }
        // Not a symbol: perhaps a key of an enclosing block holding one (`norm = norm` under
        // `sweep norm in [layernorm, rmsnorm]`), other than the key this expression defines.
        if let Some(scope) = scope {
            for depth in (0..scope.len()).rev() {
                if let Some(f) = scope[depth].field(&id.name).filter(|f| !std::ptr::eq(&f.value, e)) {
                    if self.visiting.contains(&f.key.span.start) {
                        break;
                    }
                    self.visiting.push(f.key.span.start);
                    let v = self.eval_sym(&f.value, what, allowed, Some(&scope[..depth].to_vec()));
                    self.visiting.pop();
                    return v;
                }
            }
        }
        let mut d = Diagnostic::error(Code::E0130, id.span, format!("unknown {what} `{}`", id.name));
        d = match did_you_mean(&id.name, allowed.iter().copied()) {
            Some(s) => d.with_hint(format!("did you mean `{s}`? (one of {})", allowed.join(", "))),
            None => d.with_hint(format!("one of {}", allowed.join(", "))),
        };
        self.error(d);
        None
    }
}
