//! `ROUX_CHECK_REPLICAS=N`: every N-th gradient exchange, each process hashes its weights (their
//! float32 bits) and the run stops if any two differ. Data parallelism rests on every process
//! holding the same weights; this is the debug check that they do (one host copy of the weights
//! per check: for tests and suspicion, not for speed).

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::Optimizer;
use crate::run::kit::dist::World;

/// Every how many exchanges to check (None: never), from the environment.
fn every() -> Option<u64> {
    std::env::var("ROUX_CHECK_REPLICAS").ok()?.trim().parse().ok().filter(|n| *n > 0)
}

impl Optimizer {
    /// The check, on the weights as they are before this step's update.
    pub(super) fn check_replicas(&mut self, world: &World) -> Result<()> {
        self.exchanges += 1;
        if !every().is_some_and(|n| world.size > 1 && self.exchanges.is_multiple_of(n)) {
            return Ok(());
        }
        // Divided expert weights differ by design (`divided.rs`): the replicated ones are hashed.
        let bits = Vec::<f32>::try_from(&self.replicated_weights().to_device(tch::Device::Cpu))?;
        let hash = bits.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| (h ^ x.to_bits() as u64).wrapping_mul(0x100_0000_01b3));
        let all = Tensor::zeros([world.size as i64], (Kind::Int64, tch::Device::Cpu));
        world.all_gather(&all, &Tensor::from_slice(&[hash as i64]))?;
        let hashes = Vec::<i64>::try_from(&all)?;
        if hashes.iter().any(|h| *h != hashes[0]) {
            bail!("the processes' weights differ before update {} (hashes {hashes:x?}): data parallelism lost its replicas", self.exchanges);
        }
        tracing::debug!("replicas identical at exchange {} (hash {:x})", self.exchanges, hashes[0]);
        Ok(())
    }
}
