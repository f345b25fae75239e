//! Scalar heads that post-training stages put on a language model's final hidden state: the
//! reward model's head and PPO's value head. Listed here, beside the model graph, so that the
//! planner counts the parameters that run and the runner builds them from the same list.

use super::graph::{Param, ParamInit};
use crate::recipe::ModelSpec;

/// Which scalar head; its parameters are named `<prefix>.weight` (1, d_model) and `<prefix>.bias` (1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalarHead {
    Reward,
    Value,
}

impl ScalarHead {
    pub fn prefix(self) -> &'static str {
        match self {
            ScalarHead::Reward => "reward_head",
            ScalarHead::Value => "value_head",
        }
    }

    /// The head's parameters; both start at zero (the head says nothing before training).
    pub fn params(self, spec: &ModelSpec) -> Vec<Param> {
        let p = |leaf: &str, shape: Vec<usize>| Param { name: format!("{}.{leaf}", self.prefix()), shape, init: ParamInit::Zeros, embedding: false, active: 1.0 };
        vec![p("weight", vec![1, spec.d_model]), p("bias", vec![1])]
    }

    pub fn numel(self, spec: &ModelSpec) -> u64 {
        self.params(spec).iter().map(Param::numel).sum()
    }
}
