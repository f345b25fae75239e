//! How a run's processes divide the experts of its MoE layers (`expert_parallel = n`): groups of
//! n consecutive processes, each holding every expert once, and for each process the replicas
//! of its experts in the other groups (c10d subgroups, `dist.rs`).

use anyhow::Result;

use super::dist::World;
use crate::run::model::expert_parallel::Exchange;

/// The processes a model's experts are divided over (`World::experts_layout`).
pub struct ExpertLayout {
    /// The differentiable collectives of the group, for the model.
    pub exchange: std::rc::Rc<dyn Exchange>,
    /// The group itself: n processes that together hold every expert once.
    pub group: World,
    /// The processes holding this one's experts in the other groups (None: one group).
    pub replicas: Option<World>,
}

impl World {
    /// How a model divides its MoE experts (`expert_parallel = n`; None for 1): over groups of
    /// n consecutive processes (n must divide the processes), each group holding every expert
    /// once; the processes holding the same experts in the other groups are their replicas.
    pub fn experts_layout(&self, stage: &str, n: usize) -> Result<Option<ExpertLayout>> {
        if n == 1 {
            return Ok(None);
        }
        crate::recipe::expert_parallel_fits(stage, n, self.size).map_err(anyhow::Error::msg)?;
        let (groups, me) = (self.size / n, self.rank / n);
        // Names new to the run: every process lays out the same stages in the same order.
        static LAYOUTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = LAYOUTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (group, replicas) = match groups {
            1 => (self.clone(), None),
            // Every process joins both of its groups, in the same order everywhere.
            _ => (self.subgroup(self.rank % n, n, &format!("experts-{k}-{me}"))?, Some(self.subgroup(me, groups, &format!("expert-replicas-{k}-{}", self.rank % n))?)),
        };
        Ok(Some(ExpertLayout { exchange: group.exchange()?, group, replicas }))
    }
}
