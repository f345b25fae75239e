//! What every stage kind answers alike: the model it adapts, its optimisation settings, its
//! device, whether it accumulates or checkpoints activations, its name.

use super::*;

impl StageKind {
    /// The base model and the adapter of a stage that trains LoRA adapters (`finetune`, `dpo`,
    /// `ppo`, `grpo`, `distill`, `online_dpo` or `best_of_n` with `adapter = lora { … }`): what `merge(STAGE.adapter)` folds together.
    pub fn adapter(&self) -> Option<(&ModelRef, &LoraSpec)> {
        match self {
            StageKind::Finetune(f) => f.lora.as_ref().map(|l| (&f.model, l)),
            StageKind::Dpo(d) => d.lora.as_ref().map(|l| (&d.policy, l)),
            StageKind::Grpo(g) => g.lora.as_ref().map(|l| (&g.policy, l)),
            StageKind::Distill(d) => d.lora.as_ref().map(|l| (&d.student, l)),
            StageKind::OnlineDpo(o) => o.lora.as_ref().map(|l| (&o.policy, l)),
            StageKind::BestOfN(b) => b.lora.as_ref().map(|l| (&b.policy, l)),
            StageKind::Ppo(p) => p.lora.as_ref().map(|l| (&p.policy, l)),
            _ => None,
        }
    }

    /// The optimisation settings of a post-training stage that trains (none for the others).
    pub fn optim(&self) -> Option<&Optim> {
        match self {
            StageKind::Finetune(f) => Some(&f.opt),
            StageKind::RewardModel(r) => Some(&r.opt),
            StageKind::Ppo(p) => Some(&p.opt),
            StageKind::Dpo(d) => Some(&d.opt),
            StageKind::Grpo(g) => Some(&g.opt),
            StageKind::Distill(d) => Some(&d.opt),
            StageKind::OnlineDpo(o) => Some(&o.opt),
            StageKind::BestOfN(b) => Some(&b.opt),
            StageKind::Train(_) | StageKind::Isoflop(_) | StageKind::Mixture(_) | StageKind::Compare(_) => None,
        }
    }

    /// The optimizer of a stage that trains a transformer (`train` and post-training).
    pub fn optimizer(&self) -> Option<&AdamW> {
        match self {
            StageKind::Train(t) => Some(&t.optimizer),
            kind => kind.optim().map(|o| &o.optimizer),
        }
    }

    /// Whether a `reward_model` stage trains LoRA adapters (written merged, so not `adapter`).
    pub fn reward_adapter(&self) -> bool {
        matches!(self, StageKind::RewardModel(r) if r.lora.is_some())
    }

    /// Whether the stage takes `accumulate`: it can split its batch into micro-batches.
    pub fn accumulates(&self) -> bool {
        !matches!(self, StageKind::Isoflop(_) | StageKind::Mixture(_) | StageKind::Compare(_))
    }

    /// Whether the stage checkpoints its trained model's activations (`activation_checkpointing`).
    pub fn checkpoints_activations(&self) -> bool {
        match self {
            StageKind::Train(t) => t.activation_checkpointing,
            StageKind::Finetune(f) => f.opt.activation_checkpointing,
            StageKind::RewardModel(r) => r.opt.activation_checkpointing,
            StageKind::Ppo(p) => p.opt.activation_checkpointing,
            StageKind::Dpo(d) => d.opt.activation_checkpointing,
            StageKind::Grpo(g) => g.opt.activation_checkpointing,
            StageKind::Distill(d) => d.opt.activation_checkpointing,
            StageKind::OnlineDpo(o) => o.opt.activation_checkpointing,
            StageKind::BestOfN(b) => b.opt.activation_checkpointing,
            StageKind::Isoflop(_) | StageKind::Mixture(_) | StageKind::Compare(_) => false,
        }
    }

    /// The device the stage asks for (the mixture runs on the CPU).
    pub fn device(&self) -> Device {
        match self {
            StageKind::Train(t) => t.device,
            StageKind::Isoflop(i) => i.train.device,
            StageKind::Mixture(_) => Device::Cpu,
            StageKind::Finetune(f) => f.opt.device,
            StageKind::RewardModel(r) => r.opt.device,
            StageKind::Ppo(p) => p.opt.device,
            StageKind::Dpo(d) => d.opt.device,
            StageKind::Grpo(g) => g.opt.device,
            StageKind::Distill(d) => d.opt.device,
            StageKind::OnlineDpo(o) => o.opt.device,
            StageKind::BestOfN(b) => b.opt.device,
            StageKind::Compare(c) => c.device,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            StageKind::Train(_) => "train",
            StageKind::Mixture(_) => "mixture",
            StageKind::Isoflop(_) => "isoflop",
            StageKind::Finetune(_) => "finetune",
            StageKind::RewardModel(_) => "reward_model",
            StageKind::Ppo(_) => "ppo",
            StageKind::Dpo(_) => "dpo",
            StageKind::Grpo(_) => "grpo",
            StageKind::Distill(_) => "distill",
            StageKind::OnlineDpo(_) => "online_dpo",
            StageKind::BestOfN(_) => "best_of_n",
            StageKind::Compare(_) => "compare",
        }
    }
}
