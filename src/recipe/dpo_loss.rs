//! The preference losses of `dpo` (TRL's `loss_type`s) and the f-divergence their h can be
//! taken under (TRL's `f_divergence_type`).

use serde::{Deserialize, Serialize};

/// The preference loss of a `dpo` stage, on h = (log π − log π_ref)(chosen) − (…)(rejected), as
/// TRL's `loss_type` names them.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DpoLoss {
    /// Rafailov et al. 2023: −log σ(βh); with label smoothing ε, conservative DPO (cDPO):
    /// −(1−ε)·log σ(βh) − ε·log σ(−βh).
    #[default]
    Sigmoid,
    /// Robust DPO (Chowdhury et al. 2024): the unbiased estimate under flip rate ε,
    /// (−(1−ε)·log σ(βh) + ε·log σ(−βh)) / (1 − 2ε).
    Robust,
    /// IPO (Azar et al. 2023): (h − 1/(2β))², on log-probabilities averaged over each response's
    /// tokens.
    Ipo,
    /// SLiC's hinge (Zhao et al. 2023): max(0, 1 − βh).
    Hinge,
    /// SimPO (Meng et al. 2024), reference-free: −log σ(β·(avg log π(y_c) − avg log π(y_r)) − γ),
    /// log-probabilities averaged over each response's tokens (TRL's CPO `loss_type = "simpo"`
    /// with `cpo_alpha = 0`).
    Simpo,
    /// ORPO (Hong et al. 2024), reference-free: the chosen responses' NLL minus β·log σ of the
    /// log odds ratio, odds(y) = p/(1 − p) of the per-token average probability (TRL's ORPO).
    Orpo,
    /// KTO (Ethayarajh et al. 2024; TRL's KTOTrainer) on the pairs unpaired, each chosen response
    /// desirable and each rejected one not: (1 − σ(β·(r_c − z)) + 1 − σ(β·(z − r_r))) / 2 with
    /// r = log π − log π_ref of a response and z = max(0, the step's mean r over prompts given
    /// another pair's responses), a reference point that takes no gradient.
    Kto,
    /// APO-zero (D'Oosterlinck et al. 2024, Anchored Preference Optimization): each response
    /// anchored at its reference, w_d·(1 − σ(β·r_c)) + w_u·σ(β·r_r) — the chosen made likelier and
    /// the rejected less likely than the reference, for chosen responses better than the model's
    /// own. Separable, so it also learns from unpaired feedback (TRL's KTO `apo_zero_unpaired`).
    ApoZero,
    /// APO-down: σ(β·r_c) + 1 − σ(β·(r_c − r_r)) — both made less likely, the rejected more, for
    /// chosen responses worse than the model's own.
    ApoDown,
    /// NCA (Chen et al. 2024, noise-contrastive alignment) on pairs:
    /// −log σ(β·r_c) − ½·log σ(−β·r_c) − ½·log σ(−β·r_r).
    NcaPair,
    /// SPPO's hard-label form (Wu et al. 2024): (r_c − 1/(2β))² + (r_r + 1/(2β))².
    SppoHard,
    /// EXO (Ji et al. 2024, eq. 16), the reverse KL between the model's and the labels'
    /// preference distributions: σ(βh)·(log σ(βh) − log(1 − ε)) + σ(−βh)·(log σ(−βh) − log ε),
    /// ε the label smoothing (1e-3 when 0, as TRL takes it).
    ExoPair,
    /// DiscoPOP (Chris Lu et al. 2024), a loss found by LLM-driven search: with x = βh and
    /// m = σ(x/τ), (1 − m)·(−log σ(x)) + m·e^(−x) — logistic where the policy prefers the
    /// rejected response, exponential where it prefers the chosen one.
    Discopop,
    /// BCO's pair form (Jung et al. 2024, TRL's `bco_pair`): −log σ(β·r_c) − log σ(−β·r_r), each
    /// response's implicit reward classified on its own.
    BcoPair,
    /// AOT (Melnyk et al. 2024, distributional alignment by optimal transport, TRL's `aot`): the
    /// batch's policy log-ratios log π(y_c) − log π(y_r) sorted, less the reference's sorted, under
    /// the smoothed logistic loss: the policy's distribution of margins made to dominate the
    /// reference's, quantile by quantile.
    Aot,
    /// AOT unpaired (TRL's `aot_unpaired`, formerly `aot_pair`): the batch's chosen rewards r_c sorted
    /// less its rejected rewards r_r sorted, under the smoothed logistic loss.
    AotUnpaired,
}

impl DpoLoss {
    pub fn is_sigmoid(&self) -> bool {
        *self == DpoLoss::Sigmoid
    }

    pub fn name(self) -> &'static str {
        match self {
            DpoLoss::Sigmoid => "sigmoid",
            DpoLoss::Robust => "robust",
            DpoLoss::Ipo => "ipo",
            DpoLoss::Hinge => "hinge",
            DpoLoss::Simpo => "simpo",
            DpoLoss::Orpo => "orpo",
            DpoLoss::Kto => "kto",
            DpoLoss::ApoZero => "apo_zero",
            DpoLoss::ApoDown => "apo_down",
            DpoLoss::NcaPair => "nca_pair",
            DpoLoss::SppoHard => "sppo_hard",
            DpoLoss::ExoPair => "exo_pair",
            DpoLoss::Discopop => "discopop",
            DpoLoss::BcoPair => "bco_pair",
            DpoLoss::Aot => "aot",
            DpoLoss::AotUnpaired => "aot_unpaired",
        }
    }

    /// Every loss, by the name a recipe gives it.
    pub const ALL: [DpoLoss; 16] = [
        DpoLoss::Sigmoid,
        DpoLoss::Robust,
        DpoLoss::Ipo,
        DpoLoss::Hinge,
        DpoLoss::Simpo,
        DpoLoss::Orpo,
        DpoLoss::Kto,
        DpoLoss::ApoZero,
        DpoLoss::ApoDown,
        DpoLoss::NcaPair,
        DpoLoss::SppoHard,
        DpoLoss::ExoPair,
        DpoLoss::Discopop,
        DpoLoss::BcoPair,
        DpoLoss::Aot,
        DpoLoss::AotUnpaired,
    ];

    /// Whether it scores each response on its own, so it learns from unpaired feedback and
    /// weighs desirable and undesirable responses (`desirable_weight`, `undesirable_weight`).
    pub fn unpaired(self) -> bool {
        matches!(self, DpoLoss::Kto | DpoLoss::ApoZero)
    }

    /// Whether `label_smoothing` means something for it.
    pub fn smooths(self) -> bool {
        matches!(self, DpoLoss::Sigmoid | DpoLoss::Robust | DpoLoss::Simpo | DpoLoss::ExoPair | DpoLoss::Aot | DpoLoss::AotUnpaired)
    }

    /// Whether it sorts the batch's rewards (AOT): each micro-batch's pairs are then sorted
    /// together, as TRL sorts each device's batch.
    pub fn sorts(self) -> bool {
        matches!(self, DpoLoss::Aot | DpoLoss::AotUnpaired)
    }

    /// Whether the loss compares with a frozen reference (SimPO and ORPO do not load one).
    pub fn needs_reference(self) -> bool {
        !matches!(self, DpoLoss::Simpo | DpoLoss::Orpo)
    }

    /// Whether it reads log-probabilities averaged over each response's tokens, not summed.
    pub fn averages(self) -> bool {
        matches!(self, DpoLoss::Ipo | DpoLoss::Simpo | DpoLoss::Orpo)
    }
}

/// The f-divergence whose difference between the chosen and rejected responses a DPO loss reads
/// as h (f-DPO, Wang et al. 2023; TRL's `f_divergence_type`), with u = π/π_ref of a response:
/// reverse KL gives DPO's h = log u_c − log u_r; Jensen–Shannon h − (softplus(log u_c) −
/// softplus(log u_r)); α-divergence (u_r^−α − u_c^−α)/α, the exponentials capped below the
/// float's largest (TRL's `cap_exp`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "snake_case")]
pub enum FDivergence {
    #[default]
    ReverseKl,
    JsDivergence,
    AlphaDivergence { coef: f64 },
}

impl FDivergence {
    pub fn is_reverse_kl(&self) -> bool {
        *self == FDivergence::ReverseKl
    }

    /// The losses that read h as TRL's do (the others compute from each response's ratio).
    pub fn applies_to(loss: DpoLoss) -> bool {
        matches!(loss, DpoLoss::Sigmoid | DpoLoss::Robust | DpoLoss::Ipo | DpoLoss::Hinge | DpoLoss::ExoPair)
    }
}
