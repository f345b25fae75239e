//! The global gradient norm, computed so that it does not depend on how the gradient is split:
//! float32 norms of fixed blocks of `BLOCK` elements, combined in float64. One process reading the
//! whole flat buffer and processes each holding a block-aligned slice (`zero.rs`) then compute
//! the same blocks and combine the same vector: the same norm to the bit, so gradient clipping
//! scales their gradients alike. (A float32 norm over the whole buffer and one over slices differ
//! in the last bits, and AdamW carries such differences through every later step.)

use tch::{Kind, Tensor};

/// Elements per block; sharded slices start at multiples of it (the plan's arithmetic shares it).
pub const BLOCK: i64 = crate::arith::count::NORM_BLOCK as i64;

/// The float32 norm of each `BLOCK` of `g` (a flat buffer or a block-aligned slice of one), the
/// last block possibly shorter.
pub fn blocks(g: &Tensor) -> Tensor {
    let n = g.numel() as i64;
    let full = n / BLOCK;
    let head = g.narrow(0, 0, full * BLOCK).view([full, BLOCK]).norm_scalaropt_dim(2, [1i64].as_slice(), false);
    if n % BLOCK == 0 {
        return head;
    }
    Tensor::cat(&[head, g.narrow(0, full * BLOCK, n - full * BLOCK).norm().reshape([1])], 0)
}

/// The number of blocks of an `n`-element buffer.
pub fn count(n: i64) -> i64 {
    (n + BLOCK - 1) / BLOCK
}

/// The global norm from every block's norm (float64 sum of squares), as a float32 scalar.
pub fn combine(blocks: &Tensor) -> Tensor {
    blocks.to_kind(Kind::Double).square().sum(Kind::Double).sqrt().to_kind(Kind::Float)
}

/// The global norm of a whole flat buffer.
pub fn global(g: &Tensor) -> Tensor {
    combine(&blocks(g))
}
