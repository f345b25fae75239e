//! The recipe AST. Every node keeps its span; meaning is given by the checker.

use crate::diag::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct SourceFile {
    pub name: String,
    pub name_span: Span,
    pub body: Block,
    /// Read from the YAML form: its own spellings are accepted (a bare `prompt: instruction`
    /// for a string) and hints are written in it.
    pub yaml: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub entries: Vec<Entry>,
    pub span: Span,
}

impl Block {
    pub fn fields(&self) -> impl Iterator<Item = &Field> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Field(f) => Some(f),
            _ => None,
        })
    }
    pub fn field(&self, key: &str) -> Option<&Field> {
        self.fields().find(|f| f.key.name == key)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    /// `key = expr`
    Field(Field),
    /// `data NAME = expr`, `budget NAME { … }`
    Decl(Decl),
    /// `sweep NAME in expr`
    Sweep(Sweep),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub key: Ident,
    pub value: Expr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeclKind {
    Data,
    Model,
    Stage,
    Budget,
}

impl DeclKind {
    pub fn keyword(self) -> &'static str {
        match self {
            DeclKind::Data => "data",
            DeclKind::Model => "model",
            DeclKind::Stage => "stage",
            DeclKind::Budget => "budget",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decl {
    pub kind: DeclKind,
    pub kind_span: Span,
    pub name: Ident,
    /// For `budget NAME { … }` this is a constructor with an empty path.
    pub value: Expr,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sweep {
    pub var: Ident,
    pub values: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Pow => "^",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// The literal's text is kept so printing gives back what the user wrote (`20M`).
    Num { value: f64, text: String },
    Str(String),
    Bool(bool),
    List(Vec<Expr>),
    Tuple(Vec<Expr>),
    Paren(Box<Expr>),
    Neg(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    /// `a.b.c`, `a.b(args)`, `a { … }`, `a(args) { … }`. A bare path is a reference or a symbol.
    Ctor { path: Vec<Ident>, args: Option<Vec<Arg>>, block: Option<Block> },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

impl Expr {
    /// The dotted path of a bare path expression (`corpus.vocab`), if that is what this is.
    pub fn as_path(&self) -> Option<&[Ident]> {
        match &self.kind {
            ExprKind::Ctor { path, args: None, block: None } => Some(path),
            _ => None,
        }
    }
    /// Whether this is the bare name `w` (`none` in `adapter = none`).
    pub fn is_word(&self, w: &str) -> bool {
        self.as_path().is_some_and(|p| p.len() == 1 && p[0].name == w)
    }
    /// The name of a constructor expression (`moe` in `moe { … }`).
    pub fn as_ctor_name(&self) -> Option<String> {
        match &self.kind {
            ExprKind::Ctor { path, .. } if !path.is_empty() => Some(Self::path_string(path)),
            _ => None,
        }
    }
    pub fn path_string(path: &[Ident]) -> String {
        path.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(".")
    }
}

/// Call `f` on every expression of a block, each before its parts: the values of fields,
/// declarations and sweeps, then constructor arguments and blocks, list items and operands.
pub fn walk_exprs_mut(b: &mut Block, f: &mut dyn FnMut(&mut Expr)) {
    for e in &mut b.entries {
        match e {
            Entry::Field(x) => walk_expr_mut(&mut x.value, f),
            Entry::Decl(d) => walk_expr_mut(&mut d.value, f),
            Entry::Sweep(s) => walk_expr_mut(&mut s.values, f),
        }
    }
}

fn walk_expr_mut(e: &mut Expr, f: &mut dyn FnMut(&mut Expr)) {
    f(e);
    match &mut e.kind {
        ExprKind::Ctor { args, block, .. } => {
            for a in args.iter_mut().flatten() {
                walk_expr_mut(&mut a.value, f);
            }
            if let Some(b) = block {
                walk_exprs_mut(b, f);
            }
        }
        ExprKind::List(v) | ExprKind::Tuple(v) => v.iter_mut().for_each(|x| walk_expr_mut(x, f)),
        ExprKind::Paren(x) | ExprKind::Neg(x) => walk_expr_mut(x, f),
        ExprKind::Binary(_, a, b) => {
            walk_expr_mut(a, f);
            walk_expr_mut(b, f);
        }
        ExprKind::Num { .. } | ExprKind::Str(_) | ExprKind::Bool(_) => {}
    }
}

/// Zero every span: two ASTs are the same recipe when they are equal after this (the printer
/// round-trip property compares them so).
pub fn strip_spans(r: &mut SourceFile) {
    r.name_span = Span::default();
    r.yaml = false; // the form it was read from is no part of the recipe
    strip_block(&mut r.body);
}

fn strip_block(b: &mut Block) {
    b.span = Span::default();
    for e in &mut b.entries {
        match e {
            Entry::Field(f) => {
                f.key.span = Span::default();
                strip_expr(&mut f.value);
            }
            Entry::Decl(d) => {
                d.kind_span = Span::default();
                d.name.span = Span::default();
                strip_expr(&mut d.value);
            }
            Entry::Sweep(s) => {
                s.span = Span::default();
                s.var.span = Span::default();
                strip_expr(&mut s.values);
            }
        }
    }
}

fn strip_expr(e: &mut Expr) {
    e.span = Span::default();
    match &mut e.kind {
        ExprKind::List(v) | ExprKind::Tuple(v) => v.iter_mut().for_each(strip_expr),
        ExprKind::Paren(x) | ExprKind::Neg(x) => strip_expr(x),
        ExprKind::Binary(_, a, b) => {
            strip_expr(a);
            strip_expr(b);
        }
        ExprKind::Ctor { path, args, block } => {
            path.iter_mut().for_each(|i| i.span = Span::default());
            for a in args.iter_mut().flatten() {
                if let Some(n) = &mut a.name {
                    n.span = Span::default();
                }
                strip_expr(&mut a.value);
            }
            if let Some(b) = block {
                strip_block(b);
            }
        }
        ExprKind::Num { .. } | ExprKind::Str(_) | ExprKind::Bool(_) => {}
    }
}
