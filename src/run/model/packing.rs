//! Several sequences in one row (packing): each token's position counted within its own
//! sequence, and a block-diagonal causal mask so that no token attends across a boundary — what
//! torchtune's packed datasets and TRL's padding-free packing compute, so that a packed row gives
//! each of its sequences the logits it would get alone.

use tch::{Device, Kind, Tensor};

pub struct Packing {
    /// (B, T): each token's position within its sequence.
    pub(super) positions: Tensor,
    /// (B, 1, T, T), added to the attention scores: 0 where a query may read a key (the same
    /// sequence, not later), −∞ elsewhere. Additive and made once per forward pass in the compute
    /// kind, so attention neither converts it nor saves a copy in each layer.
    pub(super) mask: Tensor,
    /// `mask` with the model's attention window too (made with it once a pass, for the blocks
    /// that have one; None without a window).
    pub(super) windowed: Option<Tensor>,
}

impl Packing {
    /// From each token's sequence id, row-major over `rows` rows of `t` tokens, a sequence's tokens
    /// adjacent: positions restart at 0 wherever the id changes. Every token sees at least itself,
    /// so no row of the mask is empty (padding is a sequence of its own).
    pub fn new(sequence_ids: &[i64], rows: usize, t: usize, device: Device) -> Packing {
        assert_eq!(sequence_ids.len(), rows * t, "one id a token");
        let mut positions = vec![0i64; rows * t];
        for k in 0..rows * t {
            if k % t > 0 && sequence_ids[k] == sequence_ids[k - 1] {
                positions[k] = positions[k - 1] + 1;
            }
        }
        let (b, t) = (rows as i64, t as i64);
        let ids = Tensor::from_slice(sequence_ids).view([b, t]).to_device(device);
        let same = ids.unsqueeze(2).eq_tensor(&ids.unsqueeze(1)); // (B, T, T)
        let causal = Tensor::ones([t, t], (Kind::Bool, device)).tril(0);
        let allowed = same.logical_and(&causal).unsqueeze(1);
        let mask = Tensor::zeros([b, 1, t, t], (Kind::Float, device)).masked_fill(&allowed.logical_not(), f64::NEG_INFINITY);
        Packing { positions: Tensor::from_slice(&positions).view([b, t]).to_device(device), mask, windowed: None }
    }

    /// The same packing with its mask in `kind` (the model's compute kind) and, for a model with
    /// an attention window, the windowed mask beside it. Packed sequences are contiguous, so the
    /// window over a row is each one's own.
    pub(super) fn for_pass(&self, kind: Kind, window: Option<usize>) -> Packing {
        let mask = self.mask.to_kind(kind);
        let t = mask.size()[3];
        let windowed = window.map(|w| {
            let band = super::attention::visible(t, t, 0, Some(w as i64), mask.device());
            mask.masked_fill(&band.logical_not(), f64::NEG_INFINITY)
        });
        Packing { positions: self.positions.shallow_clone(), mask, windowed }
    }

    /// Another handle on the same tensors.
    pub(super) fn shallow(&self) -> Packing {
        Packing { positions: self.positions.shallow_clone(), mask: self.mask.shallow_clone(), windowed: self.windowed.as_ref().map(Tensor::shallow_clone) }
    }
}
