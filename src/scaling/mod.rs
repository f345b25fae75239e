//! Scaling laws (pure arithmetic, no libtorch): compute-optimal sizing from a budget
//! (`law.rs`), and fitting a law to your own runs (`fit.rs`, `lbfgs.rs`).

pub mod fit;
pub mod law;
pub mod lbfgs;
