//! The recipe AST. Every node keeps its span; meaning is given by the checker.

use crate::diag::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    pub name: String,
    pub name_span: Span,
    pub body: Block,
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
