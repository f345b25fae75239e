//! What `optimizer = muon` changes in a stage's memory: each matrix Muon takes keeps one moment
//! (its momentum) where AdamW keeps two and a scratch buffer (run/kit/adamw/muon.rs).

use crate::arith::ModelGraph;
use crate::recipe::{Muon, StageKind};

/// The parameters of `g` that Muon updates in stage `kind` (none without `optimizer = muon`).
pub fn muon_params(kind: &StageKind, g: &ModelGraph) -> u64 {
    if kind.optimizer().is_none_or(|o| o.muon.is_none()) {
        return 0;
    }
    g.params().iter().filter(|p| Muon::takes(&p.name, p.shape.len())).map(|p| p.numel()).sum()
}

/// Bytes Muon saves in stage `kind`: AdamW's second moment and scratch, 8 a parameter it takes.
pub fn muon_saving(kind: &StageKind, g: &ModelGraph) -> u64 {
    8 * muon_params(kind, g)
}
