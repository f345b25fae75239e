//! Scalar heads on a language model's final hidden state (the reward model's and PPO's value
//! head), built from the parameters `lower::ScalarHead` lists, and the reward model they make.

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

use super::Model;
use crate::lower::ScalarHead;

/// A linear map d_model → 1: weight (1, d), bias (1).
pub struct Head {
    pub kind: ScalarHead,
    pub w: Tensor,
    pub b: Tensor,
}

impl Head {
    /// A fresh head, as the lowered list says (zeros), taking gradients.
    pub fn new(kind: ScalarHead, model: &Model) -> Head {
        let mut ps = kind.params(model.spec()).into_iter().map(|p| {
            let shape: Vec<i64> = p.shape.iter().map(|&d| d as i64).collect();
            Tensor::zeros(&shape, (Kind::Float, model.device)).set_requires_grad(true)
        });
        let (w, b) = (ps.next().expect("weight"), ps.next().expect("bias"));
        Head { kind, w, b }
    }

    /// The head's tensors from a file's named tensors (`<prefix>.weight`, `<prefix>.bias`);
    /// `file` names the file in errors.
    pub fn from_named(kind: ScalarHead, tensors: &[(String, Tensor)], device: Device, file: &std::path::Path) -> Result<Head> {
        let get = |leaf: &str| {
            let n = format!("{}.{leaf}", kind.prefix());
            tensors.iter().find(|(k, _)| *k == n).map(|(_, t)| t.to_device(device)).with_context(|| format!("{} has no `{n}`", file.display()))
        };
        Ok(Head { kind, w: get("weight")?, b: get("bias")? })
    }

    /// Hidden states (…, d) → one scalar per position (…), in float32.
    pub fn apply(&self, hidden: &Tensor) -> Tensor {
        hidden.to_kind(Kind::Float).linear(&self.w, Some(&self.b)).squeeze_dim(-1)
    }

    pub fn named(&self) -> Vec<(String, Tensor)> {
        let p = self.kind.prefix();
        vec![(format!("{p}.weight"), self.w.shallow_clone()), (format!("{p}.bias"), self.b.shallow_clone())]
    }
}

/// A language model with a reward head read at each row's last token.
pub struct RewardModel {
    pub trunk: Model,
    pub head: Head,
}

impl RewardModel {
    /// A fresh reward head on `trunk`.
    pub fn new(trunk: Model) -> RewardModel {
        let head = Head::new(ScalarHead::Reward, &trunk);
        RewardModel { trunk, head }
    }

    /// The same reward model with its trunk computing at `p` (the head stays float32).
    pub fn computing(self, p: crate::recipe::Precision) -> RewardModel {
        RewardModel { trunk: self.trunk.computing(p), head: self.head }
    }

    /// Scalar scores (B) of whole token rows (prompt, response and end marker).
    pub fn score(&self, rows: &[Vec<i64>], train: bool) -> Tensor {
        let (x, last) = pad_rows(rows, self.trunk.device);
        let (hidden, _, _) = self.trunk.forward_full(&x, train);
        self.head.apply(&at_positions(&hidden.to_kind(Kind::Float), &last))
    }

    /// `score` without gradients, `chunk` rows at a time (a rollout batch's micro-batches), joined.
    pub fn score_in_chunks(&self, rows: &[Vec<i64>], chunk: usize) -> Tensor {
        let parts: Vec<Tensor> = rows.chunks(chunk.max(1)).map(|part| tch::no_grad(|| self.score(part, false))).collect();
        Tensor::cat(&parts, 0)
    }

    /// Trunk and head tensors, named as the reward stage saves them.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        let mut v = self.trunk.named();
        v.extend(self.head.named());
        v
    }
}

/// Right-padded token rows and the index of each row's last token.
pub fn pad_rows(rows: &[Vec<i64>], device: Device) -> (Tensor, Tensor) {
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
    let mut x = vec![0i64; rows.len() * t];
    for (i, r) in rows.iter().enumerate() {
        x[i * t..i * t + r.len()].copy_from_slice(r);
    }
    let last: Vec<i64> = rows.iter().map(|r| r.len().max(1) as i64 - 1).collect();
    (Tensor::from_slice(&x).view([rows.len() as i64, t as i64]).to_device(device), Tensor::from_slice(&last).to_device(device))
}

/// Gather (B, T, d) hidden states at per-row positions (B) → (B, d).
pub fn at_positions(hidden: &Tensor, pos: &Tensor) -> Tensor {
    let d = hidden.size()[2];
    hidden.gather(1, &pos.view([-1, 1, 1]).expand([-1, 1, d], false), false).squeeze_dim(1)
}
