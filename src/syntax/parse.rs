//! pest parse tree → AST. Syntax errors become a diagnostic with words a user knows.

use pest::iterators::Pair;
use pest::Parser;

use super::ast::*;
use crate::diag::{Code, Diagnostic, Span};

use super::depth;
use super::grammar::Rule;
use super::grammar::RouxParser;

pub fn parse(src: &str) -> Result<SourceFile, Diagnostic> {
    super::breaks::check(src, super::breaks::Spelling::Recipe)?;
    depth::check_brackets(src)?;
    let mut pairs = RouxParser::parse(Rule::file, src).map_err(syntax_error)?;
    let file = pairs.next().expect("grammar: file");
    depth::check_tree(&file)?;
    let exp = file.into_inner().next().expect("grammar: experiment");
    let mut inner = exp.into_inner();
    let name = inner.next().expect("grammar: name");
    let name_span = span_of(&name);
    let body = block(inner.next().expect("grammar: block"));
    Ok(SourceFile { name: unescape(name.into_inner().next().map_or("", |p| p.as_str())), name_span, body, yaml: false })
}

/// One value (`256`, `adamw { lr = 1e-3 }`, `corpus.vocab`), its spans shifted by `offset` (where
/// the text sits in the file that diagnostics point into).
pub fn parse_expr(src: &str, offset: usize) -> Result<Expr, Diagnostic> {
    depth::check_brackets(src).map_err(|d| shift_diag(d, offset))?;
    let mut pairs = RouxParser::parse(Rule::expr_only, src).map_err(|e| shift_diag(syntax_error(e), offset))?;
    let only = pairs.next().expect("grammar: expr_only");
    depth::check_tree(&only).map_err(|d| shift_diag(d, offset))?;
    let mut e = expr(only.into_inner().next().expect("grammar: expr"));
    if offset > 0 {
        shift_expr(&mut e, offset);
    }
    Ok(e)
}

fn shift_diag(mut d: Diagnostic, offset: usize) -> Diagnostic {
    d.span = Span::new(d.span.start + offset, d.span.end + offset);
    d.hint = Some("a value: a number, a string in double quotes, a name, a list, or a constructor such as `adamw { lr = 1e-3 }`".into());
    d
}

fn shift_expr(e: &mut Expr, by: usize) {
    let sh = |s: &mut Span| *s = Span::new(s.start + by, s.end + by);
    sh(&mut e.span);
    match &mut e.kind {
        ExprKind::List(v) | ExprKind::Tuple(v) => v.iter_mut().for_each(|x| shift_expr(x, by)),
        ExprKind::Paren(x) | ExprKind::Neg(x) => shift_expr(x, by),
        ExprKind::Binary(_, a, b) => {
            shift_expr(a, by);
            shift_expr(b, by);
        }
        ExprKind::Ctor { path, args, block } => {
            path.iter_mut().for_each(|i| sh(&mut i.span));
            for a in args.iter_mut().flatten() {
                if let Some(n) = &mut a.name {
                    sh(&mut n.span);
                }
                shift_expr(&mut a.value, by);
            }
            if let Some(b) = block {
                sh(&mut b.span);
                for en in &mut b.entries {
                    match en {
                        Entry::Field(f) => {
                            sh(&mut f.key.span);
                            shift_expr(&mut f.value, by);
                        }
                        Entry::Decl(d) => {
                            sh(&mut d.kind_span);
                            sh(&mut d.name.span);
                            shift_expr(&mut d.value, by);
                        }
                        Entry::Sweep(s) => {
                            sh(&mut s.span);
                            sh(&mut s.var.span);
                            shift_expr(&mut s.values, by);
                        }
                    }
                }
            }
        }
        ExprKind::Num { .. } | ExprKind::Str(_) | ExprKind::Bool(_) => {}
    }
}

fn span_of(p: &Pair<Rule>) -> Span {
    let s = p.as_span();
    Span::new(s.start(), s.end())
}

fn block(p: Pair<Rule>) -> Block {
    let span = span_of(&p);
    let entries = p.into_inner().map(entry).collect();
    Block { entries, span }
}

fn ident(p: Pair<Rule>) -> Ident {
    Ident { span: span_of(&p), name: p.as_str().to_string() }
}

fn entry(p: Pair<Rule>) -> Entry {
    let span = span_of(&p);
    match p.as_rule() {
        Rule::field => {
            let mut it = p.into_inner().filter(|q| q.as_rule() != Rule::eq);
            let key = ident(it.next().expect("field key"));
            Entry::Field(Field { key, value: expr(it.next().expect("field value")) })
        }
        Rule::decl => {
            let mut it = p.into_inner().filter(|q| q.as_rule() != Rule::eq);
            let k = it.next().expect("decl kind");
            let kind = match k.as_str() {
                "data" => DeclKind::Data,
                "model" => DeclKind::Model,
                "stage" => DeclKind::Stage,
                _ => DeclKind::Budget,
            };
            let kind_span = span_of(&k);
            let name = ident(it.next().expect("decl name"));
            let v = it.next().expect("decl value");
            let value = if v.as_rule() == Rule::block {
                let b = block(v);
                Expr { span: b.span, kind: ExprKind::Ctor { path: vec![], args: None, block: Some(b) } }
            } else {
                expr(v)
            };
            Entry::Decl(Decl { kind, kind_span, name, value })
        }
        Rule::sweep => {
            let mut it = p.into_inner();
            let var = ident(it.next().expect("sweep var"));
            Entry::Sweep(Sweep { var, values: expr(it.next().expect("sweep values")), span })
        }
        r => unreachable!("grammar: unexpected entry {r:?}"),
    }
}

/// Precedence climbing over `unary (op unary)*`: `^` binds tightest (right-assoc), then `* /`, then `+ -`.
fn expr(p: Pair<Rule>) -> Expr {
    let mut operands = vec![];
    let mut ops = vec![];
    for q in p.into_inner() {
        match q.as_rule() {
            Rule::unary => operands.push(unary(q)),
            Rule::add => ops.push(BinOp::Add),
            Rule::sub => ops.push(BinOp::Sub),
            Rule::mul => ops.push(BinOp::Mul),
            Rule::div => ops.push(BinOp::Div),
            Rule::pow => ops.push(BinOp::Pow),
            r => unreachable!("grammar: unexpected {r:?} in expr"),
        }
    }
    climb(&mut operands.into_iter(), &mut ops.into_iter().peekable(), 0)
}

fn prec(op: BinOp) -> u8 {
    match op {
        BinOp::Add | BinOp::Sub => 1,
        BinOp::Mul | BinOp::Div => 2,
        BinOp::Pow => 3,
    }
}

fn climb(
    operands: &mut impl Iterator<Item = Expr>,
    ops: &mut std::iter::Peekable<impl Iterator<Item = BinOp>>,
    min: u8,
) -> Expr {
    let mut lhs = operands.next().expect("grammar: operand");
    while let Some(&op) = ops.peek() {
        if prec(op) < min {
            break;
        }
        ops.next();
        let next_min = if op == BinOp::Pow { prec(op) } else { prec(op) + 1 };
        let rhs = climb(operands, ops, next_min);
        let span = lhs.span.join(rhs.span);
        lhs = Expr { span, kind: ExprKind::Binary(op, Box::new(lhs), Box::new(rhs)) };
    }
    lhs
}

fn unary(p: Pair<Rule>) -> Expr {
    let span = span_of(&p);
    let mut negs = 0;
    let mut prim = None;
    for q in p.into_inner() {
        if q.as_rule() == Rule::neg {
            negs += 1;
        } else {
            prim = Some(primary(q));
        }
    }
    let mut e = prim.expect("grammar: primary");
    for _ in 0..negs {
        e = Expr { span, kind: ExprKind::Neg(Box::new(e)) };
    }
    e
}

fn primary(p: Pair<Rule>) -> Expr {
    let span = span_of(&p);
    let kind = match p.as_rule() {
        Rule::number => ExprKind::Num { value: number_value(p.as_str()), text: p.as_str().to_string() },
        Rule::string => ExprKind::Str(unescape(p.into_inner().next().map_or("", |i| i.as_str()))),
        Rule::boolean => ExprKind::Bool(p.as_str() == "true"),
        Rule::list => ExprKind::List(p.into_inner().map(expr).collect()),
        Rule::paren => {
            let mut items: Vec<Expr> = p.into_inner().map(expr).collect();
            if items.len() == 1 {
                ExprKind::Paren(Box::new(items.remove(0)))
            } else {
                ExprKind::Tuple(items)
            }
        }
        Rule::constructor => {
            // The pair's own span runs over the whitespace and comments pest skipped looking for
            // optional arguments or a block; end it at its last part instead.
            let end = p.clone().into_inner().last().map_or(span.end, |q| q.as_span().end());
            let span = Span::new(span.start, end);
            let mut path = vec![];
            let mut args = None;
            let mut blk = None;
            for q in p.into_inner() {
                match q.as_rule() {
                    Rule::path => path = q.into_inner().map(ident).collect(),
                    Rule::args => args = Some(q.into_inner().map(arg).collect()),
                    Rule::block => blk = Some(block(q)),
                    r => unreachable!("grammar: unexpected {r:?} in constructor"),
                }
            }
            return Expr { kind: ExprKind::Ctor { path, args, block: blk }, span };
        }
        r => unreachable!("grammar: unexpected primary {r:?}"),
    };
    Expr { kind, span }
}

fn arg(p: Pair<Rule>) -> Arg {
    let mut it = p.into_inner().filter(|q| q.as_rule() != Rule::eq).peekable();
    let name = if it.peek().map(|q| q.as_rule()) == Some(Rule::ident) { it.next().map(ident) } else { None };
    Arg { name, value: expr(it.next().expect("grammar: arg value")) }
}

/// `1.5e9`, `20M`, `2k`, `1_000`. Suffixes are decimal: k=1e3, M=1e6, B=G=1e9, T=1e12.
pub(crate) fn number_value(text: &str) -> f64 {
    let t: String = text.chars().filter(|&c| c != '_').collect();
    let (digits, mult) = match t.chars().last() {
        Some('k') | Some('K') => (&t[..t.len() - 1], 1e3),
        Some('M') => (&t[..t.len() - 1], 1e6),
        Some('B') | Some('G') => (&t[..t.len() - 1], 1e9),
        Some('T') => (&t[..t.len() - 1], 1e12),
        _ => (&t[..], 1.0),
    };
    digits.parse::<f64>().map(|v| v * mult).unwrap_or(f64::NAN)
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                // `\u{2028}`: a character by its code point (one a recipe may not hold raw).
                Some('u') if chars.as_str().starts_with('{') => {
                    let rest = chars.as_str();
                    // At most six hex digits: the `}` is looked for that far only (a string of
                    // many unclosed `\u{` stays linear).
                    let digits = rest[1..].bytes().take(7).position(|b| b == b'}');
                    let code = digits.and_then(|end| u32::from_str_radix(&rest[1..1 + end], 16).ok().and_then(char::from_u32).map(|c| (c, end + 2)));
                    match code {
                        Some((c, used)) => {
                            out.push(c);
                            chars = rest[used..].chars();
                        }
                        None => out.push('u'),
                    }
                }
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn syntax_error(e: pest::error::Error<Rule>) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let (start, end) = match e.location {
        InputLocation::Pos(p) => (p, p + 1),
        InputLocation::Span((s, t)) => (s, t),
    };
    let message = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut words: Vec<&str> = positives.iter().filter_map(|r| rule_word(*r)).collect();
            words.sort();
            words.dedup();
            if words.is_empty() {
                "unexpected input".to_string()
            } else {
                format!("expected {}", join_or(&words))
            }
        }
        ErrorVariant::CustomError { message } => message.clone(),
    };
    Diagnostic::error(Code::E0001, Span::new(start, end), format!("syntax error: {message}"))
        .with_hint("a recipe is `experiment \"name\" { key = value  data NAME = …  model NAME = …  stage NAME = … }`")
}

fn rule_word(r: Rule) -> Option<&'static str> {
    Some(match r {
        Rule::experiment => "`experiment \"name\" { … }`",
        Rule::block => "`{`",
        Rule::field | Rule::decl | Rule::sweep => "a `key = value` entry or `}`",
        Rule::expr | Rule::unary | Rule::constructor | Rule::path => "a value",
        Rule::number => "a number",
        Rule::string => "a string in double quotes",
        Rule::ident => "a name",
        Rule::args | Rule::arg => "an argument",
        Rule::EOI => "end of input",
        Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::pow => "an operator",
        Rule::decl_kind => "`data`, `model`, `stage` or `budget`",
        Rule::eq => "`=`",
        _ => return None,
    })
}

fn join_or(words: &[&str]) -> String {
    match words.len() {
        1 => words[0].to_string(),
        n => format!("{} or {}", words[..n - 1].join(", "), words[n - 1]),
    }
}
