//! `packing = true` on a `finetune` stage: examples packed into rows of up to the context by
//! best-fit decreasing (TRL's default strategy), once, before training. Each row keeps its
//! examples apart (positions restart, attention stays within an example: `model::Packing`), so
//! packing changes what a step holds, never what a token's loss is.

use std::collections::BTreeSet;
use tch::{Device, Tensor};

use crate::posttrain::examples::Seq;
use crate::run::kit::seqs::Batch;
use crate::run::model::Packing;

/// Several examples' inputs, targets and target weights laid end to end, with each position's
/// example (0, 1, … within the row).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedRow {
    pub x: Vec<i64>,
    pub y: Vec<i64>,
    pub w: Vec<f32>,
    pub ids: Vec<i64>,
}

impl PackedRow {
    /// The first `n` inputs of `s` (its targets after them) as the row's next example.
    fn push(&mut self, s: &Seq, n: usize) {
        let id = self.ids.last().map_or(0, |i| i + 1);
        self.x.extend_from_slice(&s.tokens[..n]);
        self.y.extend_from_slice(&s.tokens[1..]);
        self.w.extend_from_slice(&s.weights[..n]);
        self.ids.extend(std::iter::repeat_n(id, n));
    }

    /// The weight of the row's targets (its trained tokens).
    pub fn weight(&self) -> f64 {
        self.w.iter().map(|&w| w as f64).sum()
    }
}

/// Best-fit decreasing: longest example first, each into the fullest row it still fits in
/// (`context` inputs a row), else a new row. O(n log n); examples with no target are left out.
pub fn pack(seqs: &[Seq], context: usize) -> Vec<PackedRow> {
    let mut order: Vec<usize> = (0..seqs.len()).filter(|&i| seqs[i].tokens.len() >= 2).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].tokens.len()));
    let mut rows: Vec<PackedRow> = vec![];
    // Rows by the room left in them (then by index, so ties go to the oldest row).
    let mut room: BTreeSet<(usize, usize)> = BTreeSet::new();
    for i in order {
        let n = (seqs[i].tokens.len() - 1).min(context);
        let r = match room.range((n, 0)..).next().copied() {
            Some(k) => {
                room.remove(&k);
                k.1
            }
            None => {
                rows.push(PackedRow::default());
                rows.len() - 1
            }
        };
        rows[r].push(&seqs[i], n);
        let left = context.saturating_sub(rows[r].x.len());
        if left > 0 {
            room.insert((left, r));
        }
    }
    rows
}

/// Rows right-padded to the longest, as a batch and its packing (padding is one more sequence
/// of its own at the end of a row, weighing zero).
pub fn batch(rows: &[&PackedRow], device: Device) -> (Batch, Packing) {
    let t = rows.iter().map(|r| r.x.len()).max().unwrap_or(1).max(1);
    let (mut x, mut y, mut w, mut ids) = (vec![0i64; rows.len() * t], vec![0i64; rows.len() * t], vec![0f32; rows.len() * t], vec![-1i64; rows.len() * t]);
    for (k, r) in rows.iter().enumerate() {
        let span = k * t..k * t + r.x.len();
        x[span.clone()].copy_from_slice(&r.x);
        y[span.clone()].copy_from_slice(&r.y);
        w[span.clone()].copy_from_slice(&r.w);
        ids[span].copy_from_slice(&r.ids);
    }
    let shape = [rows.len() as i64, t as i64];
    let tensor = |v: &[i64]| Tensor::from_slice(v).view(shape).to_device(device);
    let batch = Batch { x: tensor(&x), y: tensor(&y), w: Tensor::from_slice(&w).view(shape).to_device(device) };
    (batch, Packing::new(&ids, rows.len(), t, device))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(n: usize, first: i64) -> Seq {
        Seq { tokens: (first..first + n as i64).collect(), weights: vec![1.0; n - 1], prompt_len: 0 }
    }

    #[test]
    fn best_fit_decreasing_fills_rows_and_keeps_every_example_once() {
        // Inputs (tokens − 1) of 2, 6, 4, 2, 5, 3, taken 6, 5, 4, 3, 2, 2 into rows of 8: 6
        // opens a row, 5 a second, 4 a third; 3 fits best in the 5's row (room 3), the first 2
        // in the 6's (room 2), the second in the 4's (room 4 → 2).
        let lens = [3, 7, 5, 3, 6, 4];
        let seqs: Vec<Seq> = lens.iter().enumerate().map(|(i, &n)| seq(n, 100 * i as i64)).collect();
        let rows = pack(&seqs, 8);
        let sizes: Vec<usize> = rows.iter().map(|r| r.x.len()).collect();
        assert_eq!(sizes, vec![8, 8, 6]);
        // Each row lists its examples in order, each example's positions contiguous.
        assert_eq!(rows[0].ids, vec![0, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(rows[0].x, vec![100, 101, 102, 103, 104, 105, 0, 1]);
        assert_eq!(rows[0].y, vec![101, 102, 103, 104, 105, 106, 1, 2]);
        let mut firsts: Vec<i64> = rows.iter().flat_map(|r| r.x.iter().zip(&r.ids).enumerate().filter(|(j, (_, id))| *j == 0 || r.ids[j - 1] != **id).map(|(_, (x, _))| *x)).collect();
        firsts.sort();
        assert_eq!(firsts, vec![0, 100, 200, 300, 400, 500]);
    }
}
