//! Post-training: the losses against hand-computed values, LoRA's parameter count and merge,
//! prompt masking, fine-tuning that learns, and the pipeline's caching of unchanged stages.
#![cfg(feature = "torch")]


use roux::posttrain::examples::sequence;
use roux::run::model::Model;
use roux::run::kit::losses::{bradley_terry, dpo, kto, ppo_clip, value_loss};
use roux::run::kit::seqs::{pad, token_logprobs};
use tch::{Device, Kind, Tensor};

mod common;
use common::{fixture, metrics, root, roux, run_ok, scratch, weight_difference};

fn recipe(name: &str) -> roux::recipe::Recipe {
    let c = roux::frontend::compile(&fixture(name)).unwrap();
    c.recipe.unwrap_or_else(|| panic!("{name}: {:?}", c.diagnostics))
}

fn t(v: &[f64]) -> Tensor {
    Tensor::from_slice(v).to_kind(Kind::Float)
}

fn close(a: &Tensor, want: f64) {
    let got = a.double_value(&[]);
    assert!((got - want).abs() < 1e-5, "got {got}, want {want}");
}

#[test]
fn bradley_terry_by_hand() {
    // Differences r_c − r_r = [1, −1]: −log σ(1) = log(1 + e^−1) = 0.3132617,
    // −log σ(−1) = log(1 + e) = 1.3132617; mean 0.8132617.
    close(&bradley_terry(&t(&[2.0, 0.5]), &t(&[1.0, 1.5]), &t(&[0.0, 0.0])), 0.8132617);
    // Margins 1 and 0: (−log σ(1 − 1) − log σ(0.5 − 1.5)) / 2 = (ln 2 + 1.3132617) / 2 = 1.0032044.
    close(&bradley_terry(&t(&[2.0, 0.5]), &t(&[1.0, 1.5]), &t(&[1.0, 0.0])), 1.0032044);
}

#[test]
fn dpo_loss_by_hand() {
    // (log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r)) = (−1 + 1.5) − (−2 + 1.5) = 1;
    // β = 0.5 → −log σ(0.5) = log(1 + e^−0.5) = 0.4740770.
    use roux::recipe::DpoLoss::*;
    use roux::run::kit::losses::DpoTerms;
    let dpo = |pc: &Tensor, pr: &Tensor, rc: &Tensor, rr: &Tensor, beta: f64, loss, smoothing: f64| dpo(pc, pr, rc, rr, &DpoTerms { beta, loss, smoothing, gamma: 0.5, kl: 0.25, weights: (1.0, 1.0), tau: 0.05, divergence: Default::default() });
    close(&dpo(&t(&[-1.0]), &t(&[-2.0]), &t(&[-1.5]), &t(&[-1.5]), 0.5, Sigmoid, 0.0), 0.4740770);
    // A reference that already prefers the chosen answer as much as the policy: margin 0, loss ln 2.
    close(&dpo(&t(&[-1.0]), &t(&[-2.0]), &t(&[-1.0]), &t(&[-2.0]), 0.5, Sigmoid, 0.0), std::f64::consts::LN_2);
    // Label smoothing ε = 0.1 (cDPO): 0.9·log(1 + e^−0.5) + 0.1·log(1 + e^0.5)
    // = 0.9·0.4740770 + 0.1·0.9740770 = 0.5240770; robust: (0.4266693 − 0.0974077) / 0.8 = 0.4115770.
    close(&dpo(&t(&[-1.0]), &t(&[-2.0]), &t(&[-1.5]), &t(&[-1.5]), 0.5, Sigmoid, 0.1), 0.5240770);
    close(&dpo(&t(&[-1.0]), &t(&[-2.0]), &t(&[-1.5]), &t(&[-1.5]), 0.5, Robust, 0.1), 0.4115770);
    // Two pairs with h = 0 and h = 3. IPO at β = 0.25 aims h at 1/(2β) = 2: ((0 − 2)² + (3 − 2)²) / 2
    // = 2.5; hinge at β = 0.5: (max(0, 1 − 0) + max(0, 1 − 1.5)) / 2 = 0.5.
    let (pc, pr, rc, rr) = (t(&[-1.0, -1.0]), t(&[-2.0, -5.0]), t(&[-1.0, -1.0]), t(&[-2.0, -2.0]));
    close(&dpo(&pc, &pr, &rc, &rr, 0.25, Ipo, 0.0), 2.5);
    close(&dpo(&pc, &pr, &rc, &rr, 0.5, Hinge, 0.0), 0.5);
    // SimPO (no reference: zeros), average log-probabilities −1 and −2, β = 2, γ = 0.5:
    // −log σ(2·1 − 0.5) = log(1 + e^−1.5) = 0.2014133.
    let zero = t(&[0.0]);
    close(&dpo(&t(&[-1.0]), &t(&[-2.0]), &zero, &zero, 2.0, Simpo, 0.0), 0.2014133);
    // ORPO: average probabilities ½ and ¼ have odds 1 and ⅓; log σ(0 + ln 3) = ln ¾, and β = 0.1
    // makes the preference term −0.1·ln ¾ = 0.0287682.
    close(&dpo(&t(&[0.5f64.ln()]), &t(&[0.25f64.ln()]), &zero, &zero, 0.1, Orpo, 0.0), 0.0287682);
    // KTO with reference point z = 0.25 (passed as `kl`), β = 0.5: r_c = −1 + 2 = 1 and
    // r_r = −2 + 1.5 = −0.5; (1 − σ(0.5·0.75) + 1 − σ(0.5·0.75)) / 2 = 1 − σ(0.375) = 0.4073334.
    close(&dpo(&t(&[-1.0]), &t(&[-2.0]), &t(&[-2.0]), &t(&[-1.5]), 0.5, Kto, 0.0), 0.4073334);
    // Unpaired, the same two responses judged one at a time, the desirable one weighed 2: its
    // loss 2·(1 − σ(0.375)), the other's 1 − σ(0.5·(0.25 + 0.5)), mean 1.5·0.4073334; and the
    // pair form weighed alike agrees.
    let terms = DpoTerms { beta: 0.5, loss: Kto, smoothing: 0.0, gamma: 0.0, kl: 0.25, weights: (2.0, 1.0), tau: 0.05, divergence: Default::default() };
    close(&kto(&t(&[-1.0, -2.0]), &t(&[-2.0, -1.5]), &t(&[1.0, 0.0]), &terms), 0.6110001);
    close(&roux::run::kit::losses::dpo(&t(&[-1.0]), &t(&[-2.0]), &t(&[-2.0]), &t(&[-1.5]), &terms), 0.6110001);
    // The same pair (r_c = 1, r_r = −0.5, β = 0.5) under the anchored and noise-contrastive losses:
    // APO-zero 1 − σ(0.5) + σ(−0.25) = 0.8153642; APO-down σ(0.5) + 1 − σ(0.75) = 0.9432806;
    // NCA −log σ(0.5) − ½·log σ(−0.5) − ½·log σ(0.25) = 1.2490852; SPPO (r_c − 1)² + (r_r + 1)² = 0.25.
    for (loss, want) in [(ApoZero, 0.8153642), (ApoDown, 0.9432806), (NcaPair, 1.2490852), (SppoHard, 0.25)] {
        close(&dpo(&t(&[-1.0]), &t(&[-2.0]), &t(&[-2.0]), &t(&[-1.5]), 0.5, loss, 0.0), want);
    }
    // EXO and DiscoPOP on the same pair, βh = 0.75: EXO at ε = 0 (taken as 1e-3, as TRL)
    // σ(0.75)·(log σ(0.75) − ln 0.999) + σ(−0.75)·(log σ(−0.75) − ln 0.001) = 1.5893476, at ε = 0.1
    // 0.1827900; DiscoPOP at τ = 0.05, m = σ(15): (1 − m)·log(1 + e^−0.75) + m·e^−0.75 = 0.4723665,
    // at τ = 1, m = σ(0.75): 0.4449378.
    for (loss, smoothing, want) in [(ExoPair, 0.0, 1.5893476), (ExoPair, 0.1, 0.1827900), (Discopop, 0.0, 0.4723665)] {
        close(&dpo(&t(&[-1.0]), &t(&[-2.0]), &t(&[-2.0]), &t(&[-1.5]), 0.5, loss, smoothing), want);
    }
    // BCO's pair form on the same pair: −log σ(0.5) − log σ(0.25) = 1.0500164.
    close(&dpo(&t(&[-1.0]), &t(&[-2.0]), &t(&[-2.0]), &t(&[-1.5]), 0.5, BcoPair, 0.0), 1.0500164);
    // AOT sorts over the batch. Two pairs: the policy's log-ratios log π(y_c) − log π(y_r) are
    // (1, −2), sorted (−2, 1); the reference's (−1, −0.5), already sorted; so β = 0.5 takes
    // (−1, 1.5): (−log σ(−0.5) − log σ(0.75)) / 2 = 0.6804740 (unsorted, (2, −1.5), it would be
    // 0.7250663); with ε = 0.1, 0.6929740. Unpaired: r_c = (1, −1) sorted (−1, 1) less r_r = (−1,
    // 0.5) sorted (−1, 0.5): (0, 0.5), (ln 2 − log σ(0.25)) / 2 = 0.6345433.
    let (pc, pr, rc, rr) = (t(&[-1.0, -3.0]), t(&[-2.0, -1.0]), t(&[-2.0, -2.0]), t(&[-1.0, -1.5]));
    close(&dpo(&pc, &pr, &rc, &rr, 0.5, Aot, 0.0), 0.6804740);
    close(&dpo(&pc, &pr, &rc, &rr, 0.5, Aot, 0.1), 0.6929740);
    close(&dpo(&pc, &pr, &rc, &rr, 0.5, AotUnpaired, 0.0), 0.6345433);
    // WPO's weights (TRL's use_weighting): logits ln(1, 2, 3) give p = (1, 2, 3)/6 and Σp² = 14/36;
    // the target's p = ½ aligns to ln(½) − ln(14/36) = ln(9/7). Uniform logits align to 0. Both
    // positions: exp(ln(9/7)/2) = √(9/7); the first alone: 9/7.
    let logits = Tensor::from_slice(&[0.0, 2f64.ln(), 3f64.ln(), 0.0, 0.0, 0.0]).to_kind(Kind::Float).view([1, 2, 3]);
    let token_logp = Tensor::from_slice(&[0.5f64.ln(), (1.0f64 / 3.0).ln()]).to_kind(Kind::Float).view([1, 2]);
    for (mask, want) in [([1.0, 1.0], (9.0f64 / 7.0).sqrt()), ([1.0, 0.0], 9.0 / 7.0)] {
        let mask = Tensor::from_slice(&mask).to_kind(Kind::Float).view([1, 2]);
        close(&roux::run::kit::losses::wpo_weights(&logits, &token_logp, &mask).get(0), want);
    }
    let terms1 = DpoTerms { beta: 0.5, loss: Discopop, smoothing: 0.0, gamma: 0.0, kl: 0.0, weights: (1.0, 1.0), tau: 1.0, divergence: Default::default() };
    close(&roux::run::kit::losses::dpo(&t(&[-1.0]), &t(&[-2.0]), &t(&[-2.0]), &t(&[-1.5]), &terms1), 0.4449378);
    // APO-zero unpaired (TRL's apo_zero_unpaired): no reference point, the desirable completion
    // weighed 2: (2·(1 − σ(0.5)) + σ(−0.25)) / 2 = 0.5964524.
    let terms = DpoTerms { loss: ApoZero, ..terms };
    close(&kto(&t(&[-1.0, -2.0]), &t(&[-2.0, -1.5]), &t(&[1.0, 0.0]), &terms), 0.5964524);
    // f-DPO on the same pair (log u_c = 1, log u_r = −0.5, β = 0.5). Jensen–Shannon: h = 1.5 −
    // (softplus(1) − softplus(−0.5)) = 0.6608153, sigmoid −log σ(0.3304076) = 0.5415279, IPO
    // (h − 1)² = 0.1150463; α = 0.5: h = (e^0.25 − e^−0.5)/0.5 = 1.3549895, −log σ(0.6774948) =
    // 0.4107099. A chosen ratio of e^−400 under α = 1 is capped at e^88.7228: a huge loss, not an
    // infinite one.
    use roux::recipe::FDivergence::*;
    for (divergence, loss, want) in [(JsDivergence, Sigmoid, 0.5415279), (JsDivergence, Ipo, 0.1150463), (AlphaDivergence { coef: 0.5 }, Sigmoid, 0.4107099)] {
        let terms = DpoTerms { beta: 0.5, loss, divergence, ..terms1 };
        close(&roux::run::kit::losses::dpo(&t(&[-1.0]), &t(&[-2.0]), &t(&[-2.0]), &t(&[-1.5]), &terms), want);
    }
    let far = DpoTerms { beta: 0.5, loss: Sigmoid, divergence: AlphaDivergence { coef: 1.0 }, ..terms1 };
    let loss = roux::run::kit::losses::dpo_per_pair(&t(&[-1.0]), &t(&[-2.0]), &t(&[399.0]), &t(&[-1.5]), &far).double_value(&[0]);
    assert!(loss.is_finite() && loss > 1e37, "{loss}");
}

#[test]
fn ppo_clipped_objective_by_hand() {
    // Ratios [1.5, 0.5, 1.1], advantages [1, 1, −2], ε = 0.2:
    //   token 0: max(−1·1.5, −1·1.2) = −1.2 (clipped)
    //   token 1: max(−1·0.5, −1·0.8) = −0.5 (unclipped)
    //   token 2: max(2·1.1, 2·1.1) = 2.2 (inside the clip range)
    // mean (−1.2 − 0.5 + 2.2)/3 = 0.1666667; clipped on 1 of 3 tokens.
    let logp = t(&[1.5f64.ln(), 0.5f64.ln(), 1.1f64.ln()]);
    let old = t(&[0.0, 0.0, 0.0]);
    let adv = t(&[1.0, 1.0, -2.0]);
    let (loss, frac) = ppo_clip(&logp, &old, &adv, &t(&[1.0, 1.0, 1.0]), 0.2);
    close(&loss, 0.5 / 3.0);
    close(&frac, 1.0 / 3.0);
    // Masking the last token out: (−1.2 − 0.5)/2.
    let (loss, _) = ppo_clip(&logp, &old, &adv, &t(&[1.0, 1.0, 0.0]), 0.2);
    close(&loss, -0.85);
}

#[test]
fn clipped_value_loss_by_hand() {
    // Token 0: V 1.0, V_old 0.5, R 0: unclipped (1 − 0)² = 1, clipped (0.7 − 0)² = 0.49 → 1.
    // Token 1: V 0.9, V_old 0.0, R 1: unclipped 0.01, clipped (0.2 − 1)² = 0.64 → 0.64.
    // ½ · mean(1, 0.64) = 0.41.
    close(&value_loss(&t(&[1.0, 0.9]), &t(&[0.5, 0.0]), &t(&[0.0, 1.0]), &t(&[1.0, 1.0]), 0.2), 0.41);
}

#[test]
fn lora_trainable_parameters_match_the_plan_and_merging_keeps_the_function() {
    let r = recipe("tiny-lifecycle.roux");
    let spec = r.model("lm").unwrap();
    let roux::recipe::StageKind::Finetune(f) = &r.stage("sft").unwrap().kind else { panic!("sft is a finetune stage") };
    let lora = f.lora.as_ref().unwrap();
    // rank 4 on q (32→32), v (32→32) and ffn.w1 (32→128) in each of 2 blocks:
    // 2 × 4 × ((32 + 32) + (32 + 32) + (32 + 128)) = 2304.
    assert_eq!(roux::lower::lora_params(spec, lora), 2304);
    let plan = roux::plan::plan(&r);
    assert_eq!(plan.stages.iter().find(|s| s.name == "sft").unwrap().trainable, 2304);

    tch::manual_seed(1);
    let mut m = Model::new(spec, Device::Cpu).unwrap();
    m.attach_lora(lora).unwrap();
    assert_eq!(m.lora.numel(), 2304);
    // B starts at zero; give it values so the adapter changes the function.
    tch::no_grad(|| {
        for b in &m.lora.b {
            let _ = b.shallow_clone().normal_(0.0, 0.1);
        }
    });
    let x = Tensor::randint(256, [2, 16], (Kind::Int64, Device::Cpu));
    let base = tch::no_grad(|| {
        let plain = Model::new(spec, Device::Cpu).unwrap();
        plain.forward(&x, false)
    });
    let unmerged = tch::no_grad(|| m.forward(&x, false));
    m.merge_lora();
    assert!(m.lora.is_empty());
    let merged = tch::no_grad(|| m.forward(&x, false));
    let diff = (&unmerged - &merged).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "merged and unmerged outputs differ by {diff}");
    // …and the adapter did change the function (so the comparison means something).
    let _ = base;
    let changed = (&unmerged - Model::new(spec, Device::Cpu).unwrap().forward(&x, false)).abs().max().double_value(&[]);
    assert!(changed > 1e-3, "the adapter had no effect ({changed})");
}

/// Adapters on a mixture-of-experts model's stacked experts (routed and shared), one A and B per
/// expert as PEFT's `target_parameters` holds them: counted as the plan counts them, and a change
/// of function that merging keeps, expert by expert, leaving the stacks no target names alone.
#[test]
fn lora_on_stacked_experts_counts_and_merges_as_the_function() {
    let r = recipe("tiny-moe-topk.roux");
    let spec = r.model("lm").unwrap();
    let lora = roux::recipe::LoraSpec { rank: 2, alpha: 4.0, dropout: 0.0, rslora: false, dora: false, targets: vec!["experts.w1".into(), "experts.w2".into(), "shared.w3".into(), "attn.q".into()], quantize_base: Default::default(), double_quant: false };
    // Per block (2): 4 experts × 2 × ((32 + 64) + (64 + 32)) routed, 1 × 2 × (32 + 64) shared,
    // 2 × (32 + 32) on q: 1536 + 192 + 128 = 1856.
    assert_eq!(roux::lower::lora_params(spec, &lora), 2 * 1856);
    tch::manual_seed(3);
    let mut m = Model::new(spec, Device::Cpu).unwrap();
    m.attach_lora(&lora).unwrap();
    assert_eq!(m.lora.numel(), 2 * 1856);
    let named = m.lora.named();
    let a = named.iter().find(|(n, _)| n == "blocks.1.ffn.experts.w2.lora_A.weight").unwrap();
    assert_eq!(a.1.size(), [4, 2, 64]);
    assert_eq!(m.lora.describe().unwrap(), "LoRA rank 2 on 3712 trainable parameters");
    tch::no_grad(|| {
        for b in &m.lora.b {
            let _ = b.shallow_clone().normal_(0.0, 0.1);
        }
    });
    let x = Tensor::randint(256, [2, 16], (Kind::Int64, Device::Cpu));
    tch::manual_seed(5);
    let before = tch::no_grad(|| m.forward(&x, false));
    let weights: Vec<(String, Tensor)> = m.named().into_iter().map(|(n, t)| (n, t.copy())).collect();
    m.merge_lora();
    let merged = tch::no_grad(|| m.forward(&x, false));
    let diff = (&before - &merged).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "merged and unmerged outputs differ by {diff}");
    // The merged experts are the base's plus s·B·A, expert by expert.
    let base = weights.iter().find(|(n, _)| n == "blocks.0.ffn.experts.w1").unwrap().1.shallow_clone();
    let merged_w1 = m.named().into_iter().find(|(n, _)| n == "blocks.0.ffn.experts.w1").unwrap().1;
    assert!((&merged_w1 - &base).abs().max().double_value(&[]) > 1e-3, "the adapter did not change the experts");
    let untouched = |name: &str| {
        let w = m.named().into_iter().find(|(n, _)| n == name).unwrap().1;
        (&w - &weights.iter().find(|(n, _)| n == name).unwrap().1).abs().max().double_value(&[])
    };
    assert_eq!(untouched("blocks.0.ffn.experts.w3"), 0.0, "an expert stack no target names");
}

/// A reward model's `eval_data = [a, b]`: each preference set's held-out pairwise accuracy at every
/// evaluation — its own set named there gives exactly `val_accuracy` — and in the report.
#[test]
fn reward_model_scores_other_preference_sets_at_each_evaluation() {
    let out = scratch("rm-eval-data");
    let recipe = out.join("r.roux");
    std::fs::write(
        &recipe,
        "experiment \"rm\" {\n  seed = 5\n  data prefs = synthetic.preferences { tasks = [reverse], pairs = 200, max_len = 3 }\n  data other = synthetic.preferences { tasks = [add], pairs = 100, max_len = 3 }\n  model lm = transformer { vocab = 256, context = 24, d_model = 32, layers = 1, heads = 2, dropout = 0 }\n  stage rm = reward_model(lm, prefs) { eval_data = [prefs, other], steps = 20, batch = 8, eval_every = 10 }\n}\n",
    )
    .unwrap();
    run_ok(&recipe, &out);
    let rows: Vec<serde_json::Value> = metrics(&out.join("rm/rm")).into_iter().filter(|m| m["val_accuracy"].is_number()).collect();
    assert_eq!(rows.iter().map(|m| m["step"].as_u64().unwrap()).collect::<Vec<_>>(), [10, 20]);
    for m in &rows {
        assert_eq!(m["val_accuracy/prefs"], m["val_accuracy"], "{m}");
        assert!(m["val_accuracy/other"].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)), "{m}");
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("rm/rm/report.json")).unwrap()).unwrap();
    assert_eq!(report["eval_data"]["prefs"]["accuracy"], report["held_out_accuracy"]);
    assert_eq!(report["eval_data"]["other"]["accuracy"], rows[1]["val_accuracy/other"]);
    assert!(report["eval_data"]["other"]["pairs"].as_u64().is_some_and(|n| n > 0), "{report}");
    let svg = std::fs::read_to_string(out.join("rm/rm/accuracy.svg")).unwrap();
    assert!(svg.contains(">other<"), "accuracy.svg draws no `other` line");
}

/// `targets = all_linear` (PEFT's "all-linear"; QLoRA adapts every layer): each kind of projection
/// the model has, the experts' stacks included, in the model's order; the same count as listing them.
#[test]
fn all_linear_targets_every_projection_the_model_has() {
    let out = scratch("lora-all-linear");
    let targets = |fixture_name: &str, targets: &str| {
        let text = std::fs::read_to_string(fixture(fixture_name)).unwrap();
        let stage = "  stage tune = finetune(lm, instr) { adapter = lora { rank = 2, targets = TARGETS }, steps = 2 }\n}\n".replace("TARGETS", targets);
        let text = format!("{}  data instr = synthetic.instructions {{ tasks = [reverse], examples = 50, max_len = 3 }}\n{stage}", text.trim_end().strip_suffix('}').unwrap());
        let text = text.replace("../../data/", "../../../data/");
        std::fs::write(out.join("r.roux"), text).unwrap();
        let c = roux::frontend::compile(&out.join("r.roux")).unwrap();
        let r = c.recipe.unwrap_or_else(|| panic!("{:?}", c.diagnostics.iter().map(|d| &d.message).collect::<Vec<_>>()));
        let roux::recipe::StageKind::Finetune(f) = &r.stage("tune").unwrap().kind else { panic!("a finetune stage") };
        let lora = f.lora.clone().unwrap();
        (lora.targets.clone(), roux::lower::lora_params(r.model("lm").unwrap(), &lora))
    };
    let (dense, n) = targets("tiny.roux", "all_linear");
    assert_eq!(dense, ["attn.q", "attn.k", "attn.v", "attn.o", "ffn.w1", "ffn.w2"]);
    assert_eq!(n, targets("tiny.roux", "[attn.q, attn.k, attn.v, attn.o, ffn.w1, ffn.w2]").1);
    let (moe, n) = targets("tiny-moe-topk.roux", "\"all-linear\"");
    assert_eq!(moe, ["attn.q", "attn.k", "attn.v", "attn.o", "experts.w1", "experts.w3", "experts.w2", "shared.w1", "shared.w3", "shared.w2"]);
    assert_eq!(n, targets("tiny-moe-topk.roux", "[attn.q, attn.k, attn.v, attn.o, experts.w1, experts.w2, experts.w3, shared.w1, shared.w2, shared.w3]").1);
}

#[test]
fn dora_adds_a_trained_magnitude_per_row_and_starts_and_merges_as_the_function() {
    let mut r = recipe("tiny-lifecycle.roux");
    let spec = r.model("lm").unwrap().clone();
    let Some(roux::recipe::StageKind::Finetune(f)) = r.stages.iter_mut().find(|s| s.name == "sft").map(|s| &mut s.kind) else { panic!("sft is a finetune stage") };
    let lora = f.lora.as_mut().unwrap();
    lora.dora = true;
    let lora = lora.clone();
    // LoRA's 2304 plus one magnitude per output row: q (32), v (32) and ffn.w1 (128) in each
    // of 2 blocks, 2 × 192 = 384.
    assert_eq!(roux::lower::lora_params(&spec, &lora), 2688);
    assert_eq!(roux::plan::plan(&r).stages.iter().find(|s| s.name == "sft").unwrap().trainable, 2688);

    tch::manual_seed(1);
    let mut m = Model::new(&spec, Device::Cpu).unwrap();
    let x = Tensor::randint(256, [2, 16], (Kind::Int64, Device::Cpu));
    let base = tch::no_grad(|| m.forward(&x, false));
    m.attach_lora(&lora).unwrap();
    assert_eq!(m.lora.numel(), 2688);
    // m = ‖W‖ per row and B = 0: the factor m/‖W + 0‖ is exactly 1, the function the base's.
    let start = tch::no_grad(|| m.forward(&x, false));
    assert_eq!((&start - &base).abs().max().double_value(&[]), 0.0);
    let q = m.param_index("blocks.0.attn.q.weight").unwrap();
    let norms = m.params[q].linalg_norm(2.0, &[1i64][..], false, None::<Kind>);
    assert!(m.lora.magnitude[0].allclose(&norms, 0.0, 0.0, false), "the first magnitude is ‖W_q‖ by rows");
    // The magnitudes train: the loss reaches them.
    let loss = m.forward(&x, true).sum(Kind::Float);
    loss.backward();
    assert!(m.lora.magnitude.iter().all(|v| v.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0));
    // Moved adapters and magnitudes: the merged weights, (m/‖W + sBA‖)·(W + sBA) row by row,
    // give the same function.
    tch::no_grad(|| {
        for b in &m.lora.b {
            let _ = b.shallow_clone().normal_(0.0, 0.1);
        }
        for v in &m.lora.magnitude {
            let _ = v.shallow_clone().g_mul_(&v.rand_like().g_add_scalar(0.5));
        }
    });
    let unmerged = tch::no_grad(|| m.forward(&x, false));
    assert!((&unmerged - &base).abs().max().double_value(&[]) > 1e-2, "the adapter changes nothing: the test would prove nothing");
    m.merge_lora();
    let merged = tch::no_grad(|| m.forward(&x, false));
    let diff = (&unmerged - &merged).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "merged and unmerged outputs differ by {diff}");
}

#[test]
fn a_dora_stage_learns_and_saves_its_magnitudes() {
    // tiny-sft's task through a rank-8 DoRA adapter on every projection of a fresh model (whose
    // frozen tied head keeps the logits small: the held-out loss falls little, the accuracy much).
    let out = scratch("sft-dora");
    let dora = out.join("dora.roux");
    let adapter = "adapter = lora { rank = 8, alpha = 16, dora = true, targets = [attn.q, attn.k, attn.v, attn.o, ffn.w1, ffn.w2] }\n    steps = 150";
    std::fs::write(&dora, std::fs::read_to_string(fixture("tiny-sft.roux")).unwrap().replace("steps = 250", adapter).replace("eval_every = 250", "eval_every = 150").replace("lr = 3e-3", "lr = 1e-2")).unwrap();
    let log = run_ok(&dora, &out);
    // 2 blocks × 8·(Σ in + out) + the magnitudes' Σ out: attention 4·8·96 + 4·48, w1 8·(48 + 192) + 192, w2 8·(192 + 48) + 48.
    let per_block = 4 * 8 * 96 + 4 * 48 + 8 * 240 + 192 + 8 * 240 + 48;
    assert!(log.contains(&format!("({} trainable of", 2 * per_block)) && log.contains(", DoRA)"), "{log}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("tiny-sft/sft/report.json")).unwrap()).unwrap();
    let (before, after) = (report["val_loss"]["before"].as_f64().unwrap(), report["val_loss"]["after"].as_f64().unwrap());
    assert!(after < before - 0.5, "held-out loss {before} → {after}");
    let (before, after) = (report["val_token_accuracy"]["before"].as_f64().unwrap(), report["val_token_accuracy"]["after"].as_f64().unwrap());
    assert!(before < 0.1 && after > 0.5, "held-out token accuracy {before} → {after}");
    assert!(report["lora_update_ratio"].as_f64().unwrap() > 0.01, "{}", report["lora_update_ratio"]);
    // Saved beside A and B, as peft names it: one magnitude per targeted linear.
    let tensors = Tensor::read_safetensors(out.join("tiny-sft/sft/adapter.safetensors")).unwrap();
    let magnitudes: Vec<&Tensor> = tensors.iter().filter(|(n, _)| n.ends_with(".lora_magnitude_vector")).map(|(_, t)| t).collect();
    assert_eq!((tensors.len(), magnitudes.len()), (3 * 12, 12));
}

/// `dpo(…) { adapter = lora { … } }` (TRL's DPOTrainer with a peft_config): only the adapters
/// train, so the first loss is exactly ln 2 (the policy is its reference: its own weights
/// without the adapters) and the plan counts Σ rank·(in + out); the stage's output is its
/// adapter, a model through `merge(po.adapter)` for a later stage and `roux merge`, and `po.model`
/// is refused with the way to write it. GRPO and PPO take an adapter the same way; a reward
/// model trains its adapters and head and is written merged.
#[test]
fn every_post_training_stage_can_train_lora_adapters_only() {
    let out = scratch("dpo-lora");
    let text = |more: &str| {
        format!(
            r#"experiment "lora-dpo" {{
          seed = 7
          data prefs = synthetic.preferences {{ tasks = [uppercase], pairs = 120, max_len = 3 }}
          model lm = transformer {{ vocab = 256, context = 24, d_model = 32, layers = 1, heads = 2, dropout = 0 }}
          stage po = dpo(lm, prefs) {{ adapter = lora {{ rank = 4, alpha = 8, targets = [attn.q, attn.v, ffn.w1, ffn.w2] }}, beta = 2, steps = 40, batch = 16, log_every = 1, eval_every = 40, eval_examples = 2, max_new = 2, optimizer = adamw {{ lr = 1e-2 }} }}
          {more}
        }}"#
        )
    };
    let recipe = out.join("r.roux");
    let more = "stage more = dpo(merge(po.adapter), prefs) { beta = 0.5, steps = 2, batch = 4, eval_every = 2, eval_examples = 2, max_new = 2, f_divergence = alpha_divergence, f_alpha_divergence_coef = 0.5 }
          data instr = synthetic.instructions { tasks = [uppercase], examples = 100, max_len = 3 }
          stage rl = grpo(policy = merge(po.adapter), prompts = instr) { adapter = lora { rank = 2 }, group = 4, batch = 8, steps = 2, max_new = 4, log_every = 1, eval_every = 2, eval_examples = 2, optimizer = adamw { loraplus_lr_ratio = 16 } }
          stage rm = reward_model(lm, prefs) { adapter = lora { rank = 2 }, steps = 30, batch = 16, log_every = 1, eval_every = 30, optimizer = adamw { lr = 1e-2 } }
          stage ppo = ppo(policy = merge(po.adapter), reward = rm.model, prompts = instr) { adapter = lora { rank = 2 }, batch = 8, steps = 2, max_new = 4, log_every = 1, eval_every = 2, eval_examples = 2 }";
    std::fs::write(&recipe, text(more)).unwrap();
    // q and v (32 → 32), w1 (32 → 128), w2 (128 → 32) at rank 4: 4·(64 + 64 + 160 + 160) = 1792.
    let c = roux::frontend::compile(&recipe).unwrap();
    let plan = roux::plan::plan(c.recipe.as_ref().unwrap());
    assert_eq!(plan.stages.iter().find(|s| s.name == "po").unwrap().trainable, 1792);
    // GRPO's default targets q and v at rank 2: 2·2·(32 + 32) = 256; PPO's value head adds 33.
    assert_eq!(plan.stages.iter().find(|s| s.name == "rl").unwrap().trainable, 256);
    assert_eq!(plan.stages.iter().find(|s| s.name == "ppo").unwrap().trainable, 256 + 33);
    assert_eq!(plan.stages.iter().find(|s| s.name == "rm").unwrap().trainable, 256 + 33);
    let log = run_ok(&recipe, &out);
    assert!(log.contains("LoRA rank 4 on 1792 trainable parameters"), "{log}");
    let m = metrics(&out.join("lora-dpo/po"));
    let losses: Vec<f64> = m.iter().filter_map(|x| x["loss"].as_f64()).collect();
    assert!((losses[0] - std::f64::consts::LN_2).abs() < 1e-6, "first loss {} (want ln 2)", losses[0]);
    let tail = losses[losses.len() - 10..].iter().sum::<f64>() / 10.0;
    assert!(tail < 0.8 * std::f64::consts::LN_2, "the loss did not fall: {losses:?}");
    let dir = out.join("lora-dpo/po");
    let adapter = Tensor::read_safetensors(dir.join("adapter.safetensors")).unwrap();
    assert_eq!(adapter.len(), 8);
    assert!(!dir.join("model.safetensors").exists());
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert!(report["lora_update_ratio"].as_f64().unwrap() > 0.0, "{report}");
    assert!(out.join("lora-dpo/more/report.json").exists(), "the stage after it read merge(po.adapter)");
    assert!(log.contains("h under the α-divergence, α = 0.5 (f-DPO)"), "{log}");
    // GRPO's first update sees a policy equal to its reference to the bit: a KL of exactly 0.
    assert!(log.contains("× 4 responses, β = 0.04, GRPO normalisation, advantages ÷ the group's std, LoRA rank 2 on 256 trainable parameters"), "{log}");
    assert_eq!(metrics(&out.join("lora-dpo/rl"))[0]["kl"].as_f64(), Some(0.0));
    assert!(log.contains("rl: LoRA+: the adapters' B matrices and every trained vector learn at 16 × lr (0.016), the A matrices and the rest at lr"), "{log}");
    assert!(out.join("lora-dpo/rl/adapter.safetensors").exists() && !out.join("lora-dpo/rl/model.safetensors").exists());
    // A reward model trains its adapters and head, and is written merged: a trunk and a head,
    // which PPO reads as any reward model.
    assert!(log.contains("for 30 steps × 16 pairs, LoRA rank 2 on 256 trainable parameters and the head"), "{log}");
    let losses: Vec<f64> = metrics(&out.join("lora-dpo/rm")).iter().filter_map(|x| x["loss"].as_f64()).collect();
    assert!(losses[25..].iter().sum::<f64>() / 5.0 < losses[0] - 0.1, "the reward model's loss did not fall: {losses:?}");
    let written = Tensor::read_safetensors(out.join("lora-dpo/rm/model.safetensors")).unwrap();
    assert!(written.iter().all(|(n, _)| !n.contains("lora_")) && written.iter().any(|(n, _)| n == "reward_head.weight"), "{:?}", written.iter().map(|(n, _)| n).collect::<Vec<_>>());
    // It is no language model to export as an adapter, and says so (not a parser's complaint about
    // a null), naming the export it has.
    let rm_dir = out.join("lora-dpo/rm");
    let o = roux(&["export", rm_dir.to_str().unwrap(), "--to", "peft", "-o", out.join("x").to_str().unwrap()]);
    let want = format!("{} records no language model to export (a reward_model stage, written with any adapter merged): `roux export {} --to hf` writes it as a sequence classifier", rm_dir.display(), rm_dir.display());
    assert!(String::from_utf8_lossy(&o.stderr).contains(&want), "{}", String::from_utf8_lossy(&o.stderr));
    // PPO as well, its value head beside the adapter.
    assert!(log.contains("KL coefficient 0.05, LoRA rank 2 on 256 trainable parameters"), "{log}");
    assert_eq!(metrics(&out.join("lora-dpo/ppo"))[0]["kl"].as_f64(), Some(0.0));
    assert!(["adapter.safetensors", "value_head.safetensors"].iter().all(|f| out.join("lora-dpo/ppo").join(f).exists()) && !out.join("lora-dpo/ppo/model.safetensors").exists());
    // `roux merge` folds it into its base: the function the next stage started from.
    let o = roux(&["merge", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = c.recipe.unwrap();
    let merged = roux::run::kit::artifacts::load_lm(&r, &out.join("lora-dpo"), &roux::recipe::ModelRef { arch: "lm".into(), weights: roux::recipe::Weights::Merged { stage: "po".into() } }, Device::Cpu).unwrap();
    let mut written = Model::new(r.model("lm").unwrap(), Device::Cpu).unwrap();
    written.load(&Tensor::read_safetensors(dir.join("merged/model.safetensors")).unwrap()).unwrap();
    let x = Tensor::from_slice(&[10i64, 20, 30, 40]).view([1, -1]);
    let gap = tch::no_grad(|| (merged.forward(&x, false) - written.forward(&x, false)).abs().max().double_value(&[]));
    assert!(gap < 1e-6, "{gap}");
    // Its output is an adapter, not a model.
    std::fs::write(&recipe, text("stage more = dpo(po.model, prefs) { steps = 2 }")).unwrap();
    let c = roux::frontend::compile(&recipe).unwrap();
    let d = c.diagnostics.iter().find(|d| d.is_error()).unwrap();
    assert_eq!((d.code, d.message.as_str(), d.hint.as_deref()), ("E0311", "stage `po` has no output `model`", Some("`po` trains a LoRA adapter, not a whole model: use `merge(po.adapter)` for a model")));
}

#[test]
fn prompt_tokens_carry_exactly_zero_loss_weight() {
    let r = recipe("tiny-lifecycle.roux");
    let set = r.example_set("instr").unwrap();
    let a = sequence(set, "reverse abc", "cba", true, 48);
    let prompt_targets = a.prompt_len - 1;
    assert!(a.weights[..prompt_targets].iter().all(|&w| w == 0.0));
    assert!(a.weights[prompt_targets..].iter().all(|&w| w == 1.0));
    // The loss does not depend on the prompt's targets: replacing them changes nothing.
    let mut b = a.clone();
    for tok in &mut b.tokens[1..a.prompt_len] {
        *tok = (*tok + 7) % 256;
    }
    tch::manual_seed(2);
    let m = Model::new(r.model("lm").unwrap(), Device::Cpu).unwrap();
    let loss = |s: &roux::posttrain::examples::Seq| {
        let mut y_only = s.clone();
        // Inputs stay those of `a`: only the targets differ.
        y_only.tokens[..a.prompt_len - 1].copy_from_slice(&a.tokens[..a.prompt_len - 1]);
        let bt = pad(&[&y_only], Device::Cpu);
        let bx = pad(&[&a], Device::Cpu);
        let lp = token_logprobs(&m.forward(&bx.x, false), &bt.y);
        (-(lp * &bt.w).sum(Kind::Float) / bt.w.sum(Kind::Float)).double_value(&[])
    };
    assert_eq!(loss(&a), loss(&b));
}

/// `eval_data = [a, b]` (TRL's dict of eval datasets): each set's held-out loss and token accuracy
/// at every evaluation beside the stage's own — the stage's own set named there gives exactly its
/// numbers; another task's starts at a fresh model's ln 256 and is in the report and loss.svg.
#[test]
fn finetune_scores_other_instruction_sets_at_each_evaluation() {
    let out = scratch("sft-eval-data");
    let recipe = out.join("r.roux");
    let text = std::fs::read_to_string(fixture("tiny-sft.roux")).unwrap().replace(
        "  model lm",
        "  data other = synthetic.instructions { tasks = [reverse], examples = 200, max_len = 3 }\n  model lm",
    );
    let text = text.replace("    steps = 250\n", "    steps = 60\n    eval_data = [instr, other]\n").replace("eval_every = 250", "eval_every = 30");
    std::fs::write(&recipe, text).unwrap();
    run_ok(&recipe, &out);
    let rows: Vec<serde_json::Value> = metrics(&out.join("tiny-sft/sft")).into_iter().filter(|m| m["val_loss"].is_number()).collect();
    assert_eq!(rows.iter().map(|m| m["step"].as_u64().unwrap()).collect::<Vec<_>>(), [30, 60]);
    for m in &rows {
        assert_eq!((&m["val_loss/instr"], &m["val_token_accuracy/instr"]), (&m["val_loss"], &m["val_token_accuracy"]), "{m}");
        assert!(m["val_loss/other"].as_f64().is_some_and(|l| l > 0.0) && m["val_token_accuracy/other"].is_number(), "{m}");
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("tiny-sft/sft/report.json")).unwrap()).unwrap();
    let other = &report["eval_data"]["other"];
    assert_eq!(other["val_loss"]["after"], rows[1]["val_loss/other"], "{other}");
    assert!((other["val_loss"]["before"].as_f64().unwrap() - 256f64.ln()).abs() < 0.25, "{other}");
    assert_eq!(report["eval_data"]["instr"]["val_loss"], report["val_loss"]);
    let svg = std::fs::read_to_string(out.join("tiny-sft/sft/loss.svg")).unwrap();
    assert!(svg.contains(">other<"), "loss.svg draws no `other` line");
}

#[test]
fn instruction_tuning_raises_exact_match() {
    let out = scratch("sft-learns");
    run_ok(&fixture("tiny-sft.roux"), &out);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("tiny-sft/sft/report.json")).unwrap()).unwrap();
    let (before, after) = (report["before"]["exact"].as_f64().unwrap(), report["after"]["exact"].as_f64().unwrap());
    assert!(before < 0.05 && after > 0.5, "held-out exact match {before} → {after}");
    // TRL's eval_loss: per trained token of the held-out examples. A fresh model spreads its
    // probability over the 256 bytes (ln 256 = 5.545 nats); fine-tuned, it predicts the uppercase
    // answer almost token for token.
    let (lb, la) = (report["val_loss"]["before"].as_f64().unwrap(), report["val_loss"]["after"].as_f64().unwrap());
    assert!((lb - 256f64.ln()).abs() < 0.25 && la < 1.0, "held-out loss {lb} → {la}");
    let (ab, aa) = (report["val_token_accuracy"]["before"].as_f64().unwrap(), report["val_token_accuracy"]["after"].as_f64().unwrap());
    assert!(ab < 0.1 && aa > 0.7, "held-out token accuracy {ab} → {aa}");
    let last = metrics(&out.join("tiny-sft/sft")).pop().unwrap();
    assert_eq!((last["val_loss"].as_f64(), last["val_token_accuracy"].as_f64()), (Some(la), Some(aa)), "{last}");
    // What the policy said, before and after: a line a held-out prompt, scored as the report
    // scores them; the run's page shows the first prompts with both answers.
    let said = |step: u64| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(out.join(format!("tiny-sft/sft/completions/step-{step}.jsonl"))).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let share = |rows: &[serde_json::Value], key: &str| rows.iter().map(|r| r[key].as_f64().unwrap_or_else(|| r[key].as_bool().unwrap() as u8 as f64)).sum::<f64>() / rows.len() as f64;
    let (first, end) = (said(0), said(250));
    assert_eq!(end.len() as u64, report["after"]["examples"].as_u64().unwrap());
    for (rows, when) in [(&first, "before"), (&end, "after")] {
        for key in ["exact", "sampled_exact", "sampled_gold"] {
            assert!((share(rows, key) - report[when][key].as_f64().unwrap()).abs() < 1e-9, "{when}: {key}");
        }
    }
    assert_eq!(first.iter().map(|r| &r["prompt"]).collect::<Vec<_>>(), end.iter().map(|r| &r["prompt"]).collect::<Vec<_>>());
    let right = end.iter().find(|r| r["exact"] == true).unwrap();
    assert_eq!(right["greedy"], right["answer"], "{right}");
    let o = roux(&["report", out.join("tiny-sft/sft").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(out.join("tiny-sft/sft/report.html")).unwrap();
    let cell = format!("<td><code>{}</code></td><td><code>{}</code></td>", right["prompt"].as_str().unwrap(), right["answer"].as_str().unwrap());
    assert!(html.contains("<h2>Held-out completions</h2>") && html.contains(&cell) && html.contains("<th>step 250</th>"), "{html}");

    // Packed into rows of 96 (examples of ~19 tokens: ~5 a row), a quarter of the rows hold
    // about as many examples, and the stage learns the task as well.
    let packed = out.join("packed.roux");
    std::fs::write(&packed, std::fs::read_to_string(fixture("tiny-sft.roux")).unwrap().replace("../../data/", "../../../data/").replace("batch = 32", "batch = 8, packing = true").replace("context = 32", "context = 96")).unwrap();
    let log = run_ok(&packed, &out);
    let line = log.lines().find(|l| l.contains("examples packed into")).unwrap_or_else(|| panic!("{log}"));
    let rows: usize = line.split("packed into ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap();
    assert!(rows * 4 < 540 && line.contains("rows of up to 96 tokens ("), "{line}");
    assert!(log.contains("for 250 steps × 8 packed rows"), "{log}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("tiny-sft/sft/report.json")).unwrap()).unwrap();
    let (after, loss) = (report["after"]["exact"].as_f64().unwrap(), report["val_loss"]["after"].as_f64().unwrap());
    assert!(after > 0.5 && loss < 1.0, "packed: held-out exact match {after}, loss {loss}");
}

#[test]
fn editing_only_the_ppo_stage_reuses_the_earlier_stages() {
    let out = scratch("pipeline-cache");
    let text = std::fs::read_to_string(fixture("tiny-lifecycle.roux")).unwrap().replace("../../data/", "../../../data/");
    let (a, b) = (out.join("a.roux"), out.join("b.roux"));
    std::fs::write(&a, &text).unwrap();
    std::fs::write(&b, text.replace("kl = 0.05", "kl = 0.2")).unwrap();
    let runs = out.join("runs");
    let first = run_ok(&a, &runs);
    for stage in ["pretrain", "sft", "rm", "rl", "po", "table"] {
        let report = std::fs::read_to_string(runs.join("tiny-lifecycle").join(stage).join("report.json")).unwrap_or_else(|_| panic!("{stage} did not finish:\n{first}"));
        // Every stage reports its peak memory (libtorch alone takes more than 50 MB).
        let peak = serde_json::from_str::<serde_json::Value>(&report).unwrap()["peak_host_memory_bytes"].as_u64();
        assert!(peak.is_some_and(|b| b > 50 << 20), "{stage}: peak_host_memory_bytes {peak:?}");
    }
    // The LoRA stage saves only its adapter: 2 tensors (A, B) per targeted linear.
    let adapter = Tensor::read_safetensors(runs.join("tiny-lifecycle/sft/adapter.safetensors")).unwrap();
    assert_eq!(adapter.len(), 2 * 3 * 2);
    assert!(adapter.iter().all(|(n, _)| n.contains(".lora_A.") || n.contains(".lora_B.")));
    let sft_report = std::fs::read(runs.join("tiny-lifecycle/sft/report.json")).unwrap();
    // The table keeps each policy's answers, scored as its row; its page puts them side by side
    // in the table's order.
    let table = runs.join("tiny-lifecycle/table");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(table.join("report.json")).unwrap()).unwrap();
    for row in report["rows"].as_array().unwrap() {
        let text = std::fs::read_to_string(table.join(format!("completions/{}.jsonl", row["policy"].as_str().unwrap()))).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let exact = lines.iter().filter(|l| l["exact"] == true).count() as f64 / lines.len() as f64;
        assert_eq!((lines.len() as u64, exact), (row["score"]["examples"].as_u64().unwrap(), row["score"]["exact"].as_f64().unwrap()), "{}", row["policy"]);
    }
    // The reward model keeps its held-out pairs as it scored them: right where the chosen
    // response scores higher, as many as the report's accuracy says; its page shows them.
    let rm = runs.join("tiny-lifecycle/rm");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(rm.join("report.json")).unwrap()).unwrap();
    let text = std::fs::read_to_string(rm.join("scores/step-10.jsonl")).unwrap();
    let pairs: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(pairs.len() as u64, report["held_out_pairs"].as_u64().unwrap());
    assert!(pairs.iter().all(|p| (p["chosen_score"].as_f64() > p["rejected_score"].as_f64()) == (p["right"] == true)));
    let right = pairs.iter().filter(|p| p["right"] == true).count() as f64 / pairs.len() as f64;
    assert_eq!(right, report["held_out_accuracy"].as_f64().unwrap());
    let texts = common::tensorboard_texts(&rm);
    let shown = &texts["scores"].as_array().unwrap_or_else(|| panic!("{texts}"))[0];
    assert_eq!((shown["step"].as_u64(), &shown["shape"]), (Some(10), &serde_json::json!([pairs.len() + 1, 6])));
    assert_eq!(shown["cells"].as_array().unwrap()[..6], ["prompt", "chosen", "rejected", "chosen_score", "rejected_score", "right"]);
    assert_eq!(roux(&["report", rm.to_str().unwrap()]).status.code(), Some(0));
    let html = std::fs::read_to_string(rm.join("report.html")).unwrap();
    assert!(html.contains("<h2>Held-out pairs at step 10</h2>") && html.contains(&format!("<td><code>{}</code></td>", pairs[0]["chosen"].as_str().unwrap())), "{html}");
    // PPO keeps its rollouts at evaluation steps: each response's reward-model score, summed KL
    // and its penalty (the coefficient 0.05 times it), the step's mean score the logged one.
    let rl = metrics(&runs.join("tiny-lifecycle/rl"));
    for step in [2, 4] {
        let text = std::fs::read_to_string(runs.join(format!("tiny-lifecycle/rl/rollouts/step-{step}.jsonl"))).unwrap();
        let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), 8);
        let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap();
        for r in &rows {
            assert!((f(r, "kl_penalty") - 0.05 * f(r, "kl")).abs() < 1e-12 && (f(r, "reward") - (f(r, "score") - f(r, "kl_penalty"))).abs() < 1e-12, "{r}");
        }
        let at = rl.iter().find(|r| r["step"] == step).unwrap();
        assert!((rows.iter().map(|r| f(r, "score")).sum::<f64>() / 8.0 - at["reward"].as_f64().unwrap()).abs() < 1e-9, "step {step}");
    }
    let o = roux(&["report", table.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(table.join("report.html")).unwrap();
    assert!(html.contains("<th>prompt</th><th>answer</th><th>base</th><th>sft</th><th>ppo</th><th>dpo</th></tr>"), "{html}");

    let second = run_ok(&b, &runs);
    for stage in ["pretrain", "sft", "rm", "po"] {
        assert!(second.contains(&format!("{stage}: up to date")), "{stage} was not reused:\n{second}");
    }
    // The edited stage retrains, and so does the table that reads its output.
    for stage in ["rl", "table"] {
        assert!(second.contains(&format!("{stage}: changed since its run in")), "{stage} was not retrained:\n{second}");
    }
    assert!(second.contains("stage.kl: 0.05 → 0.2"), "what changed is named:\n{second}");
    assert_eq!(std::fs::read(runs.join("tiny-lifecycle/sft/report.json")).unwrap(), sft_report);

    // `roux merge` turns the LoRA stage into a plain model: the same function as the recipe's
    // `merge(sft.adapter)`, and one that `sample` and `export` read.
    let sft = runs.join("tiny-lifecycle/sft");
    // Sampling the adapter stage itself merges it in memory: the text the merged model gives.
    let greedy = |dir: &std::path::Path| roux(&["sample", dir.to_str().unwrap(), "--tokens", "8", "--temperature", "0", "--prompt", "Q: reverse abc\nA: "]);
    let o = greedy(&sft);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains(&format!("`sft`: its adapter merged into `pretrain` ({}) in memory", runs.join("tiny-lifecycle/pretrain").display())), "{err}");
    let from_adapter = o.stdout;
    let o = roux(&["merge", sft.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let r = roux::frontend::compile(&a).unwrap().recipe.unwrap();
    let via_recipe = roux::run::kit::artifacts::load_lm(
        &r,
        &runs.join("tiny-lifecycle"),
        &roux::recipe::ModelRef { arch: "lm".into(), weights: roux::recipe::Weights::Merged { stage: "sft".into() } },
        Device::Cpu,
    )
    .unwrap();
    let mut merged = Model::new(r.model("lm").unwrap(), Device::Cpu).unwrap();
    merged.load(&Tensor::read_safetensors(sft.join("merged/model.safetensors")).unwrap()).unwrap();
    let x = Tensor::randint(256, [2, 12], (Kind::Int64, Device::Cpu));
    let diff = tch::no_grad(|| (via_recipe.forward(&x, false) - merged.forward(&x, false)).abs().max().double_value(&[]));
    assert!(diff < 1e-6, "{diff}");
    let merged_dir = sft.join("merged");
    assert_eq!(greedy(&merged_dir).stdout, from_adapter);
    assert_eq!(roux(&["export", merged_dir.to_str().unwrap(), "--to", "hf"]).status.code(), Some(0));
    assert!(merged_dir.join("hf/config.json").exists());
}

#[test]
fn jsonl_data_with_configured_field_names_trains_and_bad_lines_name_file_and_line() {
    let out = scratch("jsonl");
    run_ok(&fixture("tiny-jsonl.roux"), &out);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("tiny-jsonl/po/report.json")).unwrap()).unwrap();
    assert_eq!(report["kind"], "dpo");
    // The same recipe over a file whose third line lacks the response field.
    let dir = scratch("jsonl-bad");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let good = std::fs::read_to_string(fixture("data/instructions.jsonl")).unwrap();
    let mut lines: Vec<&str> = good.lines().collect();
    lines[2] = r#"{"instruction": "reverse ab", "answer": "ba"}"#;
    std::fs::write(dir.join("data/instructions.jsonl"), lines.join("\n")).unwrap();
    std::fs::copy(fixture("data/preferences.jsonl"), dir.join("data/preferences.jsonl")).unwrap();
    std::fs::copy(fixture("tiny-jsonl.roux"), dir.join("r.roux")).unwrap();
    // Refused by the check, before anything runs, with the line and why.
    let o = roux(&["run", dir.join("r.roux").to_str().unwrap(), "--out", dir.join("runs").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("error[E0214]: `instructions.jsonl` has 1 bad line(s) of 60: line 3: no field `output` (the data set reads fields instruction, output)"), "{err}");
    assert!(!err.contains("panicked") && !dir.join("runs").exists(), "{err}");
    // Examples longer than the model's context are counted and warned of, not cut silently.
    std::fs::copy(fixture("data/instructions.jsonl"), dir.join("data/instructions.jsonl")).unwrap();
    std::fs::write(dir.join("r.roux"), std::fs::read_to_string(fixture("tiny-jsonl.roux")).unwrap().replace("context = 32", "context = 20")).unwrap();
    let o = roux(&["check", dir.join("r.roux").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let cut = std::fs::read_to_string(dir.join("data/instructions.jsonl")).unwrap().lines().filter(|l| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        "Q: \nA: \n".len() + v["instruction"].as_str().unwrap().len() + v["output"].as_str().unwrap().len() > 21
    }).count();
    assert!(cut > 0 && cut < 60, "{cut}");
    assert!(err.contains(&format!("warning[W0403]: {cut} of 60 examples of `instr` ({:.1}%) are longer than model `lm`'s context of 20 and will be cut", 100.0 * cut as f64 / 60.0)), "{err}");
}

/// `compare` over a multiple-choice set (data/shakespeare-choices.jsonl: which of three passages
/// follows a line of the held-out tenth of the corpus) measures what pretraining taught: a fresh
/// model picks about a third, the same model after 300 steps well above it; report.json,
/// table.md and samples.jsonl agree, and so does `eval_choices` during pretraining. `compare`
/// over the corpus itself gives its held-out perplexity: a fresh model's is the vocabulary's
/// (loss ln 256), the trained one's is its validation loss, now over every held-out byte.
#[test]
fn pretraining_raises_multiple_choice_accuracy_and_lowers_held_out_perplexity() {
    let dir = scratch("choices");
    let recipe = r#"experiment "quiz" {
  seed = 1
  data corpus = text("../../../data/tinyshakespeare.txt") { context = 128 }
  data quiz = choices("../../../data/shakespeare-choices.jsonl") { prompt = "ctx", choices = "endings", answer = "label" }
  model lm = transformer { vocab = corpus.vocab, context = corpus.context, d_model = 64, layers = 2, heads = 4 }
  stage pretrain = train(lm, corpus) { steps = 300, batch = 16, optimizer = adamw { lr = 3e-3 }, eval_every = 150, eval_choices = quiz }
  stage table = compare(fresh = lm, trained = pretrain.model) { data = quiz }
  stage ppl = compare(fresh = lm, trained = pretrain.model) { data = corpus }
}"#;
    std::fs::write(dir.join("r.roux"), recipe).unwrap();
    run_ok(&dir.join("r.roux"), &dir.join("runs"));
    held_out_perplexity(&dir.join("runs/quiz"));
    let table = dir.join("runs/quiz/table");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(table.join("report.json")).unwrap()).unwrap();
    let acc = |i: usize| report["rows"][i]["choices"]["acc"].as_f64().unwrap();
    assert_eq!((report["rows"][0]["policy"].as_str(), report["rows"][1]["choices"]["questions"].as_u64()), (Some("fresh"), Some(200)));
    let (fresh, trained) = (acc(0), acc(1));
    eprintln!("multiple-choice accuracy: fresh {fresh:.3}, trained {trained:.3}");
    assert!(fresh < 0.4 && trained > 0.42 && trained > fresh + 0.1, "fresh {fresh}, trained {trained}");
    let samples: Vec<serde_json::Value> = std::fs::read_to_string(table.join("samples.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(samples.len(), 400);
    let right = samples.iter().filter(|s| s["policy"] == "trained" && s["pick"] == s["answer"]).count();
    assert_eq!(right as f64 / 200.0, trained);
    // `eval_choices` scored the same questions at each of pretraining's evaluations: the last is
    // compare's score of the weights it wrote.
    let logged: Vec<(u64, f64)> = metrics(&dir.join("runs/quiz/pretrain")).iter().filter_map(|m| Some((m["step"].as_u64()?, m["val_choices_acc"].as_f64()?))).collect();
    assert_eq!(logged.iter().map(|l| l.0).collect::<Vec<_>>(), [150, 300]);
    assert_eq!(logged[1].1, trained);
    let pre: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("runs/quiz/pretrain/report.json")).unwrap()).unwrap();
    assert_eq!(pre["final_choices_acc"].as_f64(), Some(trained));
    assert!(dir.join("runs/quiz/pretrain/choices.svg").exists());
    // The table as a picture: a bar a policy, its value printed beside it.
    let bars = std::fs::read_to_string(table.join("accuracy.svg")).unwrap();
    assert!(bars.matches("<rect x=").count() == 2 && bars.contains(">trained<") && bars.contains(&format!(">{:.1}<", 100.0 * trained)), "{bars}");
    let shown = std::fs::read_to_string(table.join("table.md")).unwrap();
    assert!(shown.contains(&format!("| trained | {:.1}% ± {:.1} |", 100.0 * trained, 100.0 * (trained * (1.0 - trained) / 199.0).sqrt())), "{shown}");
}

/// The perplexity table of `pretraining_raises_…`: every held-out byte but the first scored.
fn held_out_perplexity(runs: &std::path::Path) {
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(runs.join("ppl/report.json")).unwrap()).unwrap();
    let bytes = std::fs::metadata(root().join("data/tinyshakespeare.txt")).unwrap().len();
    let held = bytes - (bytes as f64 * 0.9) as u64;
    assert_eq!((report["tokens"].as_u64(), report["bytes"].as_u64()), (Some(held), Some(held)));
    let p = |i: usize, k: &str| report["rows"][i]["perplexity"][k].as_f64().unwrap();
    let (fresh, trained) = (p(0, "loss"), p(1, "loss"));
    let pre: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(runs.join("pretrain/report.json")).unwrap()).unwrap();
    let val = pre["final_val_loss"].as_f64().unwrap();
    eprintln!("held-out loss: fresh {fresh:.4}, trained {trained:.4} (validation loss {val:.4})");
    assert!((fresh - 256f64.ln()).abs() < 0.1, "a fresh model's loss is about ln 256: {fresh}");
    assert!((trained - val).abs() < 0.1 && trained < fresh - 2.0, "trained {trained}, validation {val}");
    // The loss by context length: 64 spans of 2 over the context of 128, whose token-weighted
    // mean is the loss; the trained model predicts worse from 1 or 2 bytes than from 100 or more.
    let spans = |i: usize| -> Vec<(u64, u64, f64, u64)> { serde_json::from_value(report["rows"][i]["perplexity"]["by_position"].clone()).unwrap() };
    let trained_spans = spans(1);
    assert!(runs.join("ppl/loss_by_context.svg").exists());
    let bars = std::fs::read_to_string(runs.join("ppl/bits_per_byte.svg")).unwrap();
    assert!(bars.matches("<rect x=").count() == 2 && bars.contains(">fresh<"), "{bars}");
    assert_eq!((trained_spans.len(), trained_spans[0].0, trained_spans[0].1, trained_spans[63].1), (64, 1, 2, 128));
    let late = trained_spans[50..].iter().map(|s| s.2).sum::<f64>() / 14.0;
    assert!(trained_spans[0].2 > late + 0.05, "loss from 1–2 bytes {}, from 101–128 {late}", trained_spans[0].2);
    for i in 0..2 {
        let s = spans(i);
        assert_eq!(s.iter().map(|s| s.3).sum::<u64>(), held - 1);
        let mean = s.iter().map(|s| s.2 * s.3 as f64).sum::<f64>() / (held - 1) as f64;
        assert!((mean - p(i, "loss")).abs() < 1e-9, "{mean} against {}", p(i, "loss"));
        assert_eq!(p(i, "tokens"), (held - 1) as f64);
        assert!((p(i, "perplexity") - p(i, "loss").exp()).abs() < 1e-9 * p(i, "perplexity"));
        // Bytes are tokens here: bits per byte is the summed loss over the held-out bytes, in bits.
        let bpb = p(i, "loss") * (held - 1) as f64 / held as f64 / std::f64::consts::LN_2;
        assert!((p(i, "bits_per_byte") - bpb).abs() < 1e-9, "{} against {bpb}", p(i, "bits_per_byte"));
    }
}

/// A `.jsonl` corpus's held-out documents are scored one by one, as lm-eval scores wikitext's
/// articles: no window reaches across a document's start, and each document's first token (a
/// byte here) is predicted from nothing before it in no window.
#[test]
fn held_out_documents_are_scored_each_on_its_own() {
    let dir = scratch("perplexity-documents");
    let text = std::fs::read_to_string(root().join("data/tinyshakespeare.txt")).unwrap();
    let mut rng = 7u64;
    let (mut lines, mut at) = (vec![], 0);
    while lines.len() < 150 {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let n = 1 + (rng >> 33) as usize % 150;
        lines.push(serde_json::json!({"text": &text[at..at + n]}).to_string());
        at += n;
    }
    let file = lines.join("\n") + "\n";
    std::fs::write(dir.join("docs.jsonl"), &file).unwrap();
    // The documents starting in the last tenth of the file's bytes are held out.
    let cut = (file.len() as f64 * 0.9) as usize;
    let mut start = 0;
    let mut held = vec![];
    for l in &lines {
        if start >= cut {
            held.push(serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].as_str().unwrap().len() + 1);
        }
        start += l.len() + 1;
    }
    // Beside the bytes, a BPE model reads the same documents with its own tokenizer.
    let bpe = "  data words = text(\"docs.jsonl\") { tokenizer = bpe { vocab = 300 }, context = 32 }\n  model small = transformer { vocab = words.vocab, context = 32, d_model = 32, layers = 1, heads = 2 }\n  stage bpe = train(small, words) { steps = 10, batch = 4 }\n";
    std::fs::write(dir.join("r.roux"), format!("experiment \"docs\" {{\n  data docs = text(\"docs.jsonl\") {{ context = 32 }}\n  model lm = transformer {{ vocab = 256, context = 32, d_model = 32, layers = 1, heads = 2 }}\n{bpe}  stage ppl = compare(fresh = lm, bpe = bpe.model) {{ data = docs }}\n}}\n")).unwrap();
    run_ok(&dir.join("r.roux"), &dir.join("runs"));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("runs/docs/ppl/report.json")).unwrap()).unwrap();
    let p = &report["rows"][0]["perplexity"];
    let tokens: usize = held.iter().sum();
    assert!(held.len() > 5, "{held:?}");
    assert_eq!((report["documents"].as_u64(), report["tokens"].as_u64()), (Some(held.len() as u64), Some(tokens as u64)));
    assert_eq!(p["tokens"].as_u64(), Some((tokens - held.len()) as u64));
    // A document of n bytes (its newline counted) takes ⌈(n − 1)/32⌉ windows of 32.
    assert_eq!(p["windows"].as_u64(), Some(held.iter().map(|n| (n - 1).div_ceil(32) as u64).sum()));
    assert!((p["loss"].as_f64().unwrap() - 256f64.ln()).abs() < 0.1, "{p}");
    // The BPE model's documents too are scored each on its own: each one's first token is not
    // predicted; bits per byte divide by the same bytes (the end of each document one).
    let b = &report["rows"][1];
    assert_eq!(b["documents"].as_u64(), Some(held.len() as u64));
    let ids = b["held_out_tokens"].as_u64().unwrap();
    assert!(ids < tokens as u64, "BPE merges bytes: {ids} tokens of {tokens} bytes");
    assert_eq!(b["perplexity"]["tokens"].as_u64(), Some(ids - held.len() as u64));
    let bpb = b["perplexity"]["loss"].as_f64().unwrap() * (ids - held.len() as u64) as f64 / tokens as f64 / std::f64::consts::LN_2;
    assert!((b["perplexity"]["bits_per_byte"].as_f64().unwrap() - bpb).abs() < 1e-9, "{b}");
}

/// A stage's hash covers the files it reads, not only their names: an edited JSONL set trains
/// its stages again (the old output kept aside, the change named), while a file written again
/// with the same contents, or a stage that does not read it, is reused.
#[test]
fn an_edited_data_file_trains_its_stages_again() {
    let dir = scratch("edited-inputs");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    for f in ["instructions.jsonl", "preferences.jsonl"] {
        std::fs::copy(fixture(&format!("data/{f}")), dir.join("data").join(f)).unwrap();
    }
    std::fs::copy(fixture("tiny-jsonl.roux"), dir.join("r.roux")).unwrap();
    let run = || {
        let o = roux(&["run", dir.join("r.roux").to_str().unwrap(), "--out", dir.join("runs").to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(0), "{err}");
        err
    };
    run();
    let prefs = dir.join("data/preferences.jsonl");
    let text = std::fs::read_to_string(&prefs).unwrap();
    std::fs::write(&prefs, &text).unwrap();
    let err = run();
    assert!(err.contains("sft: up to date") && err.contains("po: up to date"), "the same contents, written again, are reused:\n{err}");
    let first = text.lines().next().unwrap().to_string();
    std::fs::write(&prefs, text.replacen(&first, &first.replace("\"better\": \"", "\"better\": \"X"), 1)).unwrap();
    let err = run();
    assert!(err.contains("sft: up to date"), "sft does not read the preferences:\n{err}");
    assert!(!err.contains("po: up to date") && err.contains("inputs.prefs.preferences.jsonl: \""), "po reads them:\n{err}");
    let kept = std::fs::read_dir(dir.join("runs/tiny-jsonl")).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("po.")).count();
    assert_eq!(kept, 1, "the output of the old file is kept aside");
}

/// `roux merge` finds the adapter's definition and base through their own run directories: a
/// set-aside copy `sft.old-*` of another LoRA alpha beside them changes nothing (it used to be
/// read in directory order, giving merged weights off by up to 2.0), a relative path works from
/// inside the experiment's directory, and a base retrained since the adapter is refused.
#[test]
fn merge_reads_its_chain_by_name_never_a_set_aside_sibling() {
    let out = scratch("merge-stale");
    let text = std::fs::read_to_string(fixture("tiny-lifecycle.roux")).unwrap().replace("../../data/", "../../../data/");
    let text = format!("{}}}\n", &text[..text.find("  stage rm =").unwrap()]);
    let recipe = out.join("pair.roux");
    std::fs::write(&recipe, text).unwrap();
    let runs = out.join("runs");
    run_ok(&recipe, &runs);
    let exp = runs.join("tiny-lifecycle");
    let clean = out.join("clean");
    let o = roux(&["merge", exp.join("sft").to_str().unwrap(), "--output", clean.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));

    // Runs set aside with another alpha (4× the scale of the real one), as `--fresh` leaves them.
    for k in 1..=4 {
        let stale = exp.join(format!("sft.old-{k}"));
        std::fs::create_dir_all(&stale).unwrap();
        for f in ["adapter.safetensors", "report.json"] {
            std::fs::copy(exp.join("sft").join(f), stale.join(f)).unwrap();
        }
        let resolved = std::fs::read_to_string(exp.join("sft/resolved.json")).unwrap();
        assert!(resolved.contains("\"alpha\": 8.0"), "{resolved}");
        std::fs::write(stale.join("resolved.json"), resolved.replace("\"alpha\": 8.0", "\"alpha\": 32.0")).unwrap();
    }
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_roux")).args(["merge", "sft", "--output", "merged-here"]).current_dir(&exp).env("ROUX_QUIET", "1").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |p: std::path::PathBuf| Tensor::read_safetensors(p).unwrap().into_iter().collect::<std::collections::BTreeMap<String, Tensor>>();
    let (a, b) = (read(clean.join("model.safetensors")), read(exp.join("merged-here/model.safetensors")));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, ta) in &a {
        let tb = &b[name];
        assert!(ta.equal(tb), "`{name}` differs from the clean merge by {}", (ta - tb).abs().max().double_value(&[]));
    }

    // The base retrained since (another output hash): refused, saying which and what to do.
    let report = exp.join("pretrain/report.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    v["hash"] = serde_json::json!("0123456789abcdef");
    std::fs::write(&report, v.to_string()).unwrap();
    let o = roux(&["merge", exp.join("sft").to_str().unwrap(), "--output", out.join("refused").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("holds another output of `pretrain` than the one `sft` was trained on (hash 0123456789abcdef"), "{err}");
    assert!(!out.join("refused").exists());
}

/// GRPO's loss on a group of 4 completions of 2 tokens, by hand. Rewards (1, 0, 0, 1): mean 0.5,
/// sample standard deviation √(4·0.25/3) = √(1/3), so A = ±0.5/(√(1/3) + 1e-4) = ±a,
/// a = 0.8658754297607016. Ratios ρ = exp(log π − log π_old): row 0 (1, 1.5), row 1 (0.5; its
/// second token is padding), row 2 (1, 1), row 3 (1.1, 1). With ε = 0.2 the per-token terms
/// −min(ρA, clip(ρ)A) are row 0 (−a, −1.2a: clipped), row 1 (0.8a: clipped), row 2 (a, a),
/// row 3 (−1.1a, −a). The reference differs only at row 0's first token, log π_ref − log π = ln 2:
/// k3 = 2 − ln 2 − 1 = 0.3068528194400547, times β = 0.1.
/// `grpo`: ((−2.2a + 0.1·k3)/2 + 0.8a + 2a/2 − 2.1a/2)/4 = −0.0719284398610607.
/// `dr_grpo` (A = ±0.5, token sums over max_new = 4): (−1.1 + 0.1·k3 + 0.4 + 1.0 − 1.05)/4/4
/// = −0.04495716987849966. Clipped: 2 of the 7 real tokens.
#[test]
fn grpo_loss_by_hand() {
    use roux::recipe::{GrpoLoss, RewardScale};
    use roux::run::kit::losses::{grpo_loss, GrpoTerms};
    let group_advantages = |r: &[f64], g: usize, scale: bool| roux::run::kit::losses::group_advantages(r, g, if scale { RewardScale::Group } else { RewardScale::None }, f64::NAN);
    let t = |v: &[f64]| Tensor::from_slice(v).to_kind(Kind::Float).view([4, 2]);
    let rewards = [1.0, 0.0, 0.0, 1.0];
    let a = 0.8658754297607016;
    for (got, want) in group_advantages(&rewards, 4, true).iter().zip([a, -a, -a, a]) {
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }
    assert_eq!(group_advantages(&rewards, 4, false), vec![0.5, -0.5, -0.5, 0.5]);
    // Groups of 2: equal rewards give no signal; (1, 0) has mean 0.5 and standard deviation √0.5.
    let b = 0.5 / (0.5f64.sqrt() + 1e-4);
    for (got, want) in group_advantages(&[0.3, 0.3, 1.0, 0.0], 2, true).iter().zip([0.0, 0.0, b, -b]) {
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }
    // Scaled by the batch's spread (TRL's scale_rewards = "batch"): rewards (1, 0, 0, 1 | 1, 1, 1, 0)
    // have mean 5/8 and sample standard deviation √((5·(3/8)² + 3·(5/8)²)/7) = √(1.875/7); the
    // caller passes it, each group keeps its own mean (½, ¾).
    let s = (1.875f64 / 7.0).sqrt() + 1e-4;
    let batch = roux::run::kit::losses::group_advantages(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0], 4, RewardScale::Batch, (1.875f64 / 7.0).sqrt());
    for (got, want) in batch.iter().zip([0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75].map(|d| d / s)) {
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }
    let old = t(&[-1.0, -2.0, -1.0, -1.0, -3.0, -2.0, -1.0, -1.0]);
    let logp = t(&[-1.0, -2.0 + 1.5f64.ln(), -1.0 + 0.5f64.ln(), -1.0, -3.0, -2.0, -1.0 + 1.1f64.ln(), -1.0]);
    let reference = &logp + t(&[2.0f64.ln(), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    let mask = t(&[1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
    let check_at = |sequence: bool, norm: GrpoLoss, adv: Vec<f64>, high: f64, want: f64| {
        let adv = Tensor::from_slice(&adv).to_kind(Kind::Float);
        let terms = GrpoTerms { clip: (0.2, high), beta: 0.1, norm, max_new: 4, tokens: 7.0, sequence, delta: None };
        let (loss, clipped, kl) = grpo_loss(&logp, &old, Some(&reference), &adv, &mask, None, &terms);
        assert!((loss.double_value(&[]) - want).abs() < 1e-6, "{norm:?}, sequence {sequence}: {} vs {want}", loss.double_value(&[]));
        let clipped_tokens = if sequence { 3.0 } else { 2.0 };
        assert!((clipped.double_value(&[]) - clipped_tokens / 7.0).abs() < 1e-6, "{}", clipped.double_value(&[]));
        assert!((kl.double_value(&[]) - (1.0 - 2.0f64.ln()) / 7.0).abs() < 1e-6);
    };
    let check = |norm, adv, high, want| check_at(false, norm, adv, high, want);
    check(GrpoLoss::Grpo, group_advantages(&rewards, 4, true), 0.2, -0.0719284398610607);
    check(GrpoLoss::DrGrpo, group_advantages(&rewards, 4, false), 0.2, -0.04495716987849966);
    // DAPO: the 7 unmasked tokens' terms summed and divided by 7. With A = ±a (a = 0.8658754):
    // row 0 −a + 0.1·(1 − ln 2), −1.2a (ρ = 1.5 clipped); row 1 0.8a (ρ = 0.5 clipped);
    // row 2 a, a; row 3 −1.1a, −a: (−1.5a + 0.1·(1 − ln 2)) / 7. Clip-higher at 0.28 lets ρ = 1.5
    // count up to 1.28: (−1.58a + 0.1·(1 − ln 2)) / 7.
    check(GrpoLoss::Dapo, group_advantages(&rewards, 4, true), 0.2, -0.18116112324243527);
    check(GrpoLoss::Dapo, group_advantages(&rewards, 4, true), 0.28, -0.19105684243970042);
    // GSPO (importance_sampling = sequence): each completion's ratio is the geometric mean of its
    // tokens': row 0 √1.5 = 1.2247 (A = a: clipped to 1.2 at both tokens), row 1 0.5 (its one
    // token; A = −a: 0.8a, clipped), row 2 1 (a, a), row 3 √1.1 = 1.0488 (−1.0488a at both):
    // ((−2.4a + 0.1·k3)/2 + 0.8a + a − 1.0488a)/4; 3 of the 7 tokens clipped. DAPO's sums the same
    // terms over the 7 tokens: (−2.4a + 0.1·k3 + 0.8a + 2a − 2.0976a)/7.
    check_at(true, GrpoLoss::Grpo, group_advantages(&rewards, 4, true), 0.2, -0.09331747832943318);
    check_at(true, GrpoLoss::Dapo, group_advantages(&rewards, 4, true), 0.2, -0.20560573863486095);
    // Two-sided clipping (`delta`): one completion, A = −1, ratios 3 and 1. Unclipped its first
    // token's term is 3 (the clip's 1.2 is not taken where A < 0); capped at δ = 2 it is 2, so the
    // GRPO mean is (2 + 1)/2 = 1.5, not 2.
    let two = |delta| {
        let terms = GrpoTerms { clip: (0.2, 0.2), beta: 0.0, norm: GrpoLoss::Grpo, max_new: 2, tokens: 2.0, sequence: false, delta };
        let lp = Tensor::from_slice(&[3f64.ln(), 0.0]).to_kind(Kind::Float).view([1, 2]);
        let (loss, _, _) = grpo_loss(&lp, &lp.zeros_like(), None, &Tensor::from_slice(&[-1f32]), &lp.ones_like(), None, &terms);
        loss.double_value(&[])
    };
    assert!((two(None) - 2.0).abs() < 1e-6 && (two(Some(2.0)) - 1.5).abs() < 1e-6, "{} {}", two(None), two(Some(2.0)));
    // `top_entropy_quantile`: only the tokens kept carry the policy term, and both still count in
    // the completion's mean: keeping the second alone gives (0 + 1)/2; the first alone (3 + 0)/2.
    let kept = |keep: [f32; 2]| {
        let terms = GrpoTerms { clip: (0.2, 0.2), beta: 0.0, norm: GrpoLoss::Grpo, max_new: 2, tokens: 2.0, sequence: false, delta: None };
        let lp = Tensor::from_slice(&[3f64.ln(), 0.0]).to_kind(Kind::Float).view([1, 2]);
        let keep = Tensor::from_slice(&keep).view([1, 2]);
        grpo_loss(&lp, &lp.zeros_like(), None, &Tensor::from_slice(&[-1f32]), &lp.ones_like(), Some(&keep), &terms).0.double_value(&[])
    };
    assert!((kept([0.0, 1.0]) - 0.5).abs() < 1e-6 && (kept([1.0, 0.0]) - 1.5).abs() < 1e-6, "{} {}", kept([0.0, 1.0]), kept([1.0, 0.0]));
    // The threshold is torch.quantile's (linear between order statistics): the 0.8-quantile of
    // 1..=5 is 4.2, of 1..=6 is 5.0.
    use roux::run::kit::losses::quantile;
    assert_eq!(quantile(&mut [5.0, 1.0, 3.0, 2.0, 4.0], 0.8).map(|q| (q * 1e9).round() / 1e9), Some(4.2));
    assert_eq!(quantile(&mut [6.0, 5.0, 4.0, 3.0, 2.0, 1.0], 0.8), Some(5.0));
    assert_eq!(quantile(&mut [], 0.5), None);
}

/// RLOO (`loss = rloo`) as TRL's RLOOTrainer computes it: leave-one-out advantages, the KL to the
/// reference summed over each completion and taken off its reward, one clipped ratio per completion.
#[test]
fn rloo_by_hand() {
    use roux::recipe::GrpoLoss;
    use roux::run::kit::losses::{grpo_loss, rloo_advantages, sequence_k1, GrpoTerms};
    let close_all = |got: &[f64], want: &[f64]| {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    };
    // Rewards (1, 0, 0, 1): each baseline is the mean of the other three, 1/3 or 2/3.
    close_all(&rloo_advantages(&[1.0, 0.0, 0.0, 1.0], 4), &[2.0 / 3.0, -2.0 / 3.0, -2.0 / 3.0, 2.0 / 3.0]);
    // Pairs: the other completion is the baseline; equal rewards give nothing.
    close_all(&rloo_advantages(&[0.3, 0.3, 1.0, 0.0], 2), &[0.0, 0.0, 1.0, -1.0]);
    // Groups of 3, rewards (3, 0, 6): baselines 3, 4.5 and 1.5.
    close_all(&rloo_advantages(&[3.0, 0.0, 6.0], 3), &[0.0, -4.5, 4.5]);
    let t = |v: &[f64]| Tensor::from_slice(v).to_kind(Kind::Float).view([4, 2]);
    let old = t(&[-1.0, -2.0, -1.0, -1.0, -3.0, -2.0, -1.0, -1.0]);
    let logp = t(&[-1.0, -2.0 + 1.5f64.ln(), -1.0 + 0.5f64.ln(), -1.0, -3.0, -2.0, -1.0 + 1.1f64.ln(), -1.0]);
    let reference = &old + t(&[2.0f64.ln(), 1.5f64.ln(), -2.0f64.ln(), 5.0, 0.0, 0.0, 1.1f64.ln(), 0.0]);
    let mask = t(&[1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
    // KL per completion, Σ log π_old − log π_ref over its tokens: −ln 3, ln 2 (the masked 5 not
    // counted), 0, −ln 1.1.
    close_all(&Vec::<f64>::try_from(&sequence_k1(&old, &reference, &mask)).unwrap(), &[-3f64.ln(), 2f64.ln(), 0.0, -1.1f64.ln()]);
    // Ratios per completion: exp(Σ log π − log π_old) = 1.5, 0.5, 1, 1.1. With A = (2/3)(1, −1,
    // −1, 1) and clip 0.2: −min(ρA, clip(ρ)A) = −0.8 (1.5 clipped to 1.2), 0.8·2/3 (0.5 clipped to
    // 0.8), 2/3, −1.1·2/3: mean −1/12, half the completions clipped. Clip-higher 0.28: 1.28 for
    // the first, mean (−1.28 + 0.8 + 1 − 1.1)·(2/3)/4 = −0.58/6.
    let adv = Tensor::from_slice(&rloo_advantages(&[1.0, 0.0, 0.0, 1.0], 4)).to_kind(Kind::Float);
    for (high, want) in [(0.2, -1.0 / 12.0), (0.28, -0.58 / 6.0)] {
        let terms = GrpoTerms { clip: (0.2, high), beta: 0.05, norm: GrpoLoss::Rloo, max_new: 4, tokens: 7.0, sequence: false, delta: None };
        let (loss, clipped, kl) = grpo_loss(&logp, &old, Some(&reference), &adv, &mask, None, &terms);
        assert!((loss.double_value(&[]) - want).abs() < 1e-6, "clip high {high}: {} vs {want}", loss.double_value(&[]));
        assert!((clipped.double_value(&[]) - 0.5).abs() < 1e-6, "{}", clipped.double_value(&[]));
        // The KL is in the reward, not the loss (β = 0.05 changed nothing above); logged as the
        // mean k1 per response token, (−ln 3 + ln 2 − ln 1.1)/7.
        let k1 = (-3f64.ln() + 2f64.ln() - 1.1f64.ln()) / 7.0;
        assert!((kl.double_value(&[]) - k1).abs() < 1e-6, "{} vs {k1}", kl.double_value(&[]));
    }
    // The gradient at ρ = 1 is REINFORCE's with the leave-one-out baseline: −A_i/B on each of
    // completion i's response-token log-probabilities.
    let lp = old.copy().set_requires_grad(true);
    let terms = GrpoTerms { clip: (0.2, 0.2), beta: 0.0, norm: GrpoLoss::Rloo, max_new: 4, tokens: 7.0, sequence: false, delta: None };
    grpo_loss(&lp, &old, None, &adv, &mask, None, &terms).0.backward();
    let a = 2.0 / 3.0 / 4.0;
    let want: [f64; 8] = [-a, -a, a, 0.0, a, a, -a, -a];
    let got = Vec::<f64>::try_from(&lp.grad().to_kind(Kind::Double).view([-1])).unwrap();
    assert!(got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-6), "{got:?} vs {want:?}");
}

/// The GRPO stage's check errors, message and hint pinned.
#[test]
fn grpo_configuration_errors_say_what_and_how() {
    let cases = [
        ("grpo_batch_not_groups.roux", "a batch of 30 completions is not a whole number of groups of 8", "`batch` counts completions, `group` of them to a prompt: use a batch of 24 or 32"),
        (
            "grpo_prompt_and_answer_beyond_context.roux",
            "the longest prompt of `instr` (27 tokens) and `max_new` = 40 need 67 positions, beyond the model's context of 48",
            "use `max_new = 21` at most, or a model with a longer context",
        ),
        (
            "grpo_exact_match_without_answers.roux",
            "`exact_match` compares with the data's answers, but `pairs` holds preference pairs without answers",
            "use instruction data (its responses are the answers) as `prompts`, or reward with `reward_model(rm.model)`",
        ),
        ("grpo_unknown_reward.roux", "unknown reward `lenght`", "did you mean `length`? (rewards: exact_match, format, length, matches(\"regex\"), reward_model(STAGE.model))"),
    ];
    for (file, message, hint) in cases {
        let c = roux::frontend::compile(&common::root().join("tests/bad").join(file)).unwrap();
        let d = c.diagnostics.iter().find(|d| d.is_error()).unwrap();
        assert_eq!((d.message.as_str(), d.hint.as_deref()), (message, Some(hint)), "{file}");
    }
}

/// GRPO learns from its reward (the length penalty shortens the answers while the reward rises)
/// and, killed after a checkpoint, resumes to the same weights and metrics as an uninterrupted run.
#[test]
fn grpo_follows_its_reward_and_resumes_exactly_after_a_kill() {
    let recipe = fixture("tiny-grpo.roux");
    let (whole, killed) = (scratch("grpo-whole"), scratch("grpo-killed"));
    run_ok(&recipe, &whole);
    let m = common::metrics(&whole.join("tiny-grpo/rl"));
    let mean = |rows: &[serde_json::Value], k: &str| rows.iter().map(|v| v[k].as_f64().unwrap()).sum::<f64>() / rows.len() as f64;
    let (first, last) = (&m[..6], &m[m.len() - 6..]);
    assert!(mean(last, "response_length") < mean(first, "response_length"), "length {} → {}", mean(first, "response_length"), mean(last, "response_length"));
    assert!(mean(last, "reward") > mean(first, "reward"), "reward {} → {}", mean(first, "reward"), mean(last, "reward"));
    // The report's learning-signal summary is the last quarter's share of groups with equal
    // rewards, warned about from 90% on.
    let report = |d: &std::path::Path| -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("tiny-grpo/rl/report.json")).unwrap()).unwrap();
        // (Measurements, not results: they differ between runs.)
        for k in ["wall_seconds", "peak_host_memory_bytes"] {
            v.as_object_mut().unwrap().remove(k);
        }
        v
    };
    let flat = mean(&m[m.len() - m.len() / 4..], "flat_groups");
    let r = report(&whole);
    assert!((r["flat_groups_last_quarter"].as_f64().unwrap() - flat).abs() < 1e-12, "{r}");
    let flat_warned = r["warnings"].as_array().unwrap().iter().any(|w| w["signal"] == "flat_groups");
    assert_eq!(flat_warned, flat >= 0.9, "{r}");
    // At each evaluation the step's completions, their rewards term by term and their advantages
    // are kept: each reward is its terms' weighted sum, the step's mean reward is the logged one,
    // and each group's advantages (rewards less the group's mean, over its spread) sum to zero.
    for at in m.iter().filter(|row| row["step"].as_u64().unwrap() % 4 == 0) {
        let step = at["step"].as_u64().unwrap();
        let text = std::fs::read_to_string(whole.join(format!("tiny-grpo/rl/rollouts/step-{step}.jsonl"))).unwrap();
        let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), 16);
        for row in &rows {
            let terms = row["terms"].as_array().unwrap();
            assert_eq!(terms.iter().map(|t| t["term"].as_str().unwrap()).collect::<Vec<_>>(), ["exact_match", "format", "length"]);
            let sum: f64 = terms.iter().map(|t| t["weight"].as_f64().unwrap() * t["value"].as_f64().unwrap()).sum();
            assert!((sum - row["reward"].as_f64().unwrap()).abs() < 1e-12, "{row}");
            let format = terms[1]["value"].as_f64().unwrap();
            assert_eq!(format == 0.0, row["truncated"] == true, "{row}");
        }
        assert!((mean(&rows, "reward") - at["reward"].as_f64().unwrap()).abs() < 1e-9, "step {step}");
        for group in rows.chunks(4) {
            assert!(group.iter().all(|r| r["prompt"] == group[0]["prompt"] && r["group"] == group[0]["group"]));
            assert!(group.iter().map(|r| r["advantage"].as_f64().unwrap()).sum::<f64>().abs() < 1e-4, "step {step}: {group:?}");
        }
    }

    // Killed once the GRPO stage has checkpointed.
    let dir = killed.join("tiny-grpo/rl");
    let interrupted = common::kill_after_checkpoint(&["run", recipe.to_str().unwrap(), "--out", killed.to_str().unwrap()], &dir, 8);
    assert!(interrupted, "the GRPO stage finished before it could be killed, three times");
    let err = run_ok(&recipe, &killed);
    assert!(err.contains("rl: resuming from step"), "{err}");
    let read = |d: &std::path::Path| std::fs::read(d.join("tiny-grpo/rl/model.safetensors")).unwrap();
    assert!(read(&whole) == read(&killed), "weights differ after a resume");
    assert_eq!(common::metrics(&whole.join("tiny-grpo/rl")), common::metrics(&dir), "metrics differ after a resume");
    assert_eq!(report(&whole), report(&killed), "the report differs after a resume");
    for step in (4..=24).step_by(4) {
        let rollouts = |d: &std::path::Path| std::fs::read_to_string(d.join(format!("tiny-grpo/rl/rollouts/step-{step}.jsonl"))).unwrap();
        assert_eq!(rollouts(&whole), rollouts(&killed), "step {step}'s rollouts differ after a resume");
    }
    // TensorBoard shows each evaluation's completions (step 0's once, though the resumed run
    // wrote it again) and rollouts as tables of the files' lines, the same after a resume.
    let texts = common::tensorboard_texts(&whole.join("tiny-grpo/rl"));
    assert!(texts == common::tensorboard_texts(&dir), "TensorBoard's texts differ after a resume");
    let steps = |tag: &str| texts[tag].as_array().unwrap().iter().map(|t| t["step"].as_u64().unwrap()).collect::<Vec<_>>();
    assert_eq!(steps("completions"), [0, 4, 8, 12, 16, 20, 24]);
    assert_eq!(steps("rollouts"), [4, 8, 12, 16, 20, 24]);
    for t in texts["rollouts"].as_array().unwrap() {
        let file = std::fs::read_to_string(whole.join(format!("tiny-grpo/rl/rollouts/step-{}.jsonl", t["step"]))).unwrap();
        let first: serde_json::Value = serde_json::from_str(file.lines().next().unwrap()).unwrap();
        let (shape, cells) = (t["shape"].as_array().unwrap(), t["cells"].as_array().unwrap());
        let columns = shape[1].as_u64().unwrap() as usize;
        assert_eq!(shape[0].as_u64().unwrap() as usize, 1 + file.lines().count(), "{t}");
        assert_eq!(cells[..4], ["prompt", "answer", "completion", "reward"], "{t}");
        assert_eq!(cells[columns], format!("    {}", first["prompt"].as_str().unwrap()).replace('\n', "\n    "));
        assert_eq!(cells[columns + 3].as_str().unwrap().parse::<f64>().unwrap(), first["reward"].as_f64().unwrap());
    }

    // DAPO's token-level loss with clip-higher, advantages scaled by the step's spread of
    // rewards rather than each group's, follows the reward as well.
    let dapo = scratch("grpo-dapo");
    let text = std::fs::read_to_string(&recipe).unwrap().replace("../../data/", "../../../data/").replace("    beta = 0.04\n", "    beta = 0.04\n    loss = dapo\n    clip_high = 0.28\n    scale_rewards = batch\n");
    std::fs::write(dapo.join("r.roux"), text).unwrap();
    let log = run_ok(&dapo.join("r.roux"), &dapo);
    assert!(log.contains("β = 0.04, DAPO normalisation, advantages ÷ the batch's std, ratio clipped to [0.8, 1.28]"), "{log}");
    let m = common::metrics(&dapo.join("tiny-grpo/rl"));
    let (first, last) = (&m[..6], &m[m.len() - 6..]);
    assert!(mean(last, "reward") > mean(first, "reward"), "DAPO: reward {} → {}", mean(first, "reward"), mean(last, "reward"));

    // GSPO's sequence-level ratio (with its authors' narrow clip range; two passes a step, so
    // the ratio leaves 1 — on the first pass GSPO's gradient is GRPO's) follows it too, and clips.
    let gspo = scratch("grpo-gspo");
    let gspo_keys = "    beta = 0.04\n    importance_sampling = sequence\n    clip = 0.0003\n    clip_high = 0.0004\n    epochs = 2\n";
    let text = std::fs::read_to_string(&recipe).unwrap().replace("../../data/", "../../../data/").replace("    beta = 0.04\n", gspo_keys);
    std::fs::write(gspo.join("r.roux"), text).unwrap();
    let log = run_ok(&gspo.join("r.roux"), &gspo);
    assert!(log.contains("β = 0.04, GRPO normalisation, advantages ÷ the group's std, ratio clipped to [0.9997, 1.0004], one ratio per completion (GSPO)"), "{log}");
    let m = common::metrics(&gspo.join("tiny-grpo/rl"));
    let (first, last) = (&m[..6], &m[m.len() - 6..]);
    assert!(mean(last, "reward") > mean(first, "reward"), "GSPO: reward {} → {}", mean(first, "reward"), mean(last, "reward"));
    assert!(mean(&m, "clip_fraction") > 0.0, "GSPO never clipped");

    // RLOO (TRL's RLOOTrainer): leave-one-out baselines, the KL taken off the reward, one ratio per
    // completion. Its KL is logged as TRL logs it (k1 per token: zero only on the first step, whose
    // policy is the reference), and it follows the reward too.
    let rloo = scratch("grpo-rloo");
    let text = std::fs::read_to_string(&recipe).unwrap().replace("../../data/", "../../../data/").replace("    beta = 0.04
", "    beta = 0.05
    loss = rloo
");
    std::fs::write(rloo.join("r.roux"), text).unwrap();
    let log = run_ok(&rloo.join("r.roux"), &rloo);
    let said = "rl: RLOO on prompts of `instr`: 24 steps × 4 prompts × 4 responses, β = 0.05 (β·KL taken off each completion's reward), RLOO's leave-one-out baselines, one ratio per completion, advantages unscaled";
    assert!(log.contains(said), "{log}");
    let m = common::metrics(&rloo.join("tiny-grpo/rl"));
    let (first, last) = (&m[..6], &m[m.len() - 6..]);
    assert!(mean(last, "reward") > mean(first, "reward"), "RLOO: reward {} → {}", mean(first, "reward"), mean(last, "reward"));
    assert_eq!(m[0]["kl"].as_f64(), Some(0.0), "{}", m[0]);
    assert!(m[1..].iter().all(|r| r["kl"].as_f64().unwrap() != 0.0), "RLOO's KL stayed zero");
}

/// `patience = N` on post-training stages: the stage stops once N evaluations in a row bring no
/// better held-out measure (the reward model's pairwise accuracy, DPO's held-out pairwise
/// accuracy, KTO's reward margin on held-out feedback), says so in report.json, and a run resumed after its stop stops again at once with
/// the same weights.
#[test]
fn patience_stops_post_training_stages_and_survives_a_resume() {
    let out = scratch("posttrain-patience");
    // At lr 1e-12 no float32 weight moves: the first evaluation (step 5) stays the best.
    let text = std::fs::read_to_string(fixture("tiny-pairs.roux"))
        .unwrap()
        .replace("steps = 30", "steps = 100")
        .replace("eval_every = 30", "eval_every = 5, patience = 2")
        .replace("lr = 1e-3", "lr = 1e-12")
        .replace("  stage rm =", "  data instr = synthetic.instructions { tasks = [uppercase], examples = 100, max_len = 3 }\n  stage sft = finetune(lm, instr) { steps = 100, batch = 8, eval_every = 5, patience = 2, eval_examples = 4, max_new = 2, optimizer = adamw { lr = 1e-12 } }\n  stage rm =");
    let recipe = out.join("p.roux");
    std::fs::write(&recipe, text).unwrap();
    let runs = out.join("runs");
    let log = run_ok(&recipe, &runs);
    let report = |stage: &str| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(runs.join("pairs").join(stage).join("report.json")).unwrap()).unwrap() };
    // Fine-tuning watches its held-out loss (lower is better), as HF's EarlyStoppingCallback.
    for (stage, measure) in [("sft", "loss"), ("rm", "pairwise_accuracy"), ("po", "pairwise_accuracy"), ("kt", "reward_margin")] {
        let r = report(stage);
        assert_eq!(r["stopped_early_at"], 15, "{stage}: {r}");
        assert_eq!((r["patience"]["evaluations"].as_u64(), r["patience"]["measure"].as_str(), r["patience"]["best_step"].as_u64()), (Some(2), Some(measure), Some(5)), "{stage}: {r}");
        assert!(log.contains(&format!("{stage}: stopping early at step 15 of 100: no better held-out {} in 2 evaluations (the best, ", measure.replace('_', " "))), "{log}");
        let steps: Vec<u64> = std::fs::read_to_string(runs.join("pairs").join(stage).join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap()).collect();
        assert_eq!(steps.last(), Some(&15), "{stage}");
    }
    // Killed after its stop but before it finished: the rerun resumes from the step-15
    // checkpoint, stops there again, and writes the same weights and held-out accuracy.
    let rm = runs.join("pairs/rm");
    let (weights, accuracy) = (std::fs::read(rm.join("model.safetensors")).unwrap(), report("rm")["held_out_accuracy"].clone());
    std::fs::remove_file(rm.join("report.json")).unwrap();
    std::fs::remove_file(rm.join("model.safetensors")).unwrap();
    let again = run_ok(&recipe, &runs);
    assert!(again.contains("rm: resuming from step 15 of 100"), "{again}");
    assert_eq!(report("rm")["stopped_early_at"], 15);
    assert_eq!(report("rm")["held_out_accuracy"], accuracy);
    assert!(std::fs::read(rm.join("model.safetensors")).unwrap() == weights, "the resumed stop wrote other weights");
}

/// KTO on unpaired feedback (TRL's KTOTrainer on prompt, completion, label): the policy starts as
/// its reference, so the first loss is each example's weight × (1 − σ(0)) averaged — 0.5·(1.2·d +
/// u)/16 from the logged counts — then it falls and the held-out desirable completions' reward
/// ends above the undesirable ones'. Two micro-batches a step take the same steps; the plan
/// counts one sequence an example (half of pairs).
#[test]
fn kto_learns_from_unpaired_feedback() {
    let out = scratch("kto-unpaired");
    let recipe = out.join("k.roux");
    let stage = |name: &str, extra: &str| format!("stage {name} = dpo(lm, fb) {{ loss = kto, beta = 0.5, desirable_weight = 1.2, steps = 40, batch = 16, log_every = 1, eval_every = 20, eval_examples = 16, max_new = 2, optimizer = adamw {{ lr = 3e-3 }} {extra} }}");
    std::fs::write(
        &recipe,
        format!(
            "experiment \"kto\" {{\n  seed = 7\n  data fb = synthetic.feedback {{ tasks = [uppercase], examples = 240, max_len = 3 }}\n  data prefs = synthetic.preferences {{ tasks = [uppercase], pairs = 240, max_len = 3 }}\n  model lm = transformer {{ vocab = 256, context = 24, d_model = 32, layers = 1, heads = 2, dropout = 0 }}\n  {}\n  {}\n  stage pairs = dpo(lm, prefs) {{ loss = kto, beta = 0.5, steps = 40, batch = 16, log_every = 1, optimizer = adamw {{ lr = 3e-3 }} }}\n  {}\n  stage pairs_pre = dpo(lm, prefs) {{ loss = kto, beta = 0.5, steps = 40, batch = 16, log_every = 1, optimizer = adamw {{ lr = 3e-3 }}, precompute_ref_log_probs = true }}\n}}\n",
            stage("k", ", eval_data = fb"),
            stage("k2", ", accumulate = 2") + "\n  " + &stage("az", ", loss = apo_zero").replace("loss = kto, ", ""),
            stage("k_pre", ", precompute_ref_log_probs = true, eval_data = fb") + "\n  " + &stage("az_pre", ", loss = apo_zero, precompute_ref_log_probs = true").replace("loss = kto, ", "")
        ),
    )
    .unwrap();
    let plan = roux(&["plan", recipe.to_str().unwrap(), "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let tokens = |s: usize| plan["stages"][s]["tokens"].as_u64().unwrap();
    assert_eq!((tokens(0), tokens(3)), (40 * 16 * 24, 2 * 40 * 16 * 24));
    let log = run_ok(&recipe, &out);
    let (train, good) = {
        let set = roux::frontend::compile(&recipe).unwrap().recipe.unwrap().example_set("fb").unwrap().clone();
        let split = roux::posttrain::examples::feedback(&set, 7).unwrap();
        (split.train.len(), split.train.iter().filter(|f| f.desirable).count())
    };
    assert!(log.contains(&format!("k: KTO (kto loss, β = 0.5, weights 1.2 and 1) on `fb` ({train} examples: {good} desirable, {} not)", train - good)), "{log}");
    let m = metrics(&out.join("kto/k"));
    let first = &m[0];
    let (d, u) = (first["count/chosen"].as_f64().unwrap(), first["count/rejected"].as_f64().unwrap());
    assert_eq!(d + u, 16.0);
    let want = 0.5 * (1.2 * d + u) / 16.0;
    assert!((first["loss"].as_f64().unwrap() - want).abs() < 1e-6, "first loss {} (want {want})", first["loss"]);
    let losses: Vec<f64> = m.iter().filter_map(|x| x["loss"].as_f64()).collect();
    let tail = losses[30..].iter().sum::<f64>() / 10.0;
    assert!(tail < 0.6 * want, "the loss did not fall: {losses:?}");
    assert!(m.iter().all(|x| x["kl"].as_f64().is_some_and(|z| z >= 0.0)) && m[0].get("rewards/accuracies").is_none());
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("kto/k/report.json")).unwrap()).unwrap();
    let held = &report["held_out_rewards"];
    assert!(held["chosen"].as_f64().unwrap() > held["rejected"].as_f64().unwrap() && held["accuracy"].is_null(), "{held}");
    assert_eq!(report["held_out_feedback"], 16);
    // The experiment's page heads each stage by its measure: a margin here, pairs' accuracy.
    let page = out.join("kto.html");
    let o = roux(&["report", out.join("kto").to_str().unwrap(), "-o", page.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains(&format!("held-out reward margin {:.3}", held["margin"].as_f64().unwrap())) && html.contains("held-out pairwise accuracy"), "{html}");
    // In two micro-batches: the same losses.
    let m2 = metrics(&out.join("kto/k2"));
    for (a, b) in m.iter().zip(&m2) {
        assert!((a["loss"].as_f64().unwrap() - b["loss"].as_f64().unwrap()).abs() < 1e-5, "step {}: {} vs {}", a["step"], a["loss"], b["loss"]);
    }
    // APO-zero unpaired (TRL's KTO with apo_zero_unpaired) anchors at the reference itself: no
    // reference point is computed or logged (`kl` is only the held-out sampled one); its first loss is the same 0.5·(1.2·d + u)/16 (1 −
    // σ(0) and σ(0) are both ½), it falls, and the held-out desirable completions end ahead.
    assert!(log.contains("az: Unpaired preference optimisation (apo_zero loss, β = 0.5, weights 1.2 and 1)"), "{log}");
    let az = metrics(&out.join("kto/az"));
    let (d, u) = (az[0]["count/chosen"].as_f64().unwrap(), az[0]["count/rejected"].as_f64().unwrap());
    let want = 0.5 * (1.2 * d + u) / 16.0;
    assert!((az[0]["loss"].as_f64().unwrap() - want).abs() < 1e-6 && az[0].get("kl").is_none(), "{:?}", az[0]);
    let losses: Vec<f64> = az.iter().filter_map(|x| x["loss"].as_f64()).collect();
    assert!(losses[30..].iter().sum::<f64>() / 10.0 < 0.8 * want, "APO-zero's loss did not fall: {losses:?}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("kto/az/report.json")).unwrap()).unwrap();
    let held = &report["held_out_rewards"];
    assert!(held["chosen"].as_f64().unwrap() > held["rejected"].as_f64().unwrap(), "{held}");
    // With the reference's log-probabilities precomputed (TRL's KTOTrainer has it too; KTO's
    // mismatched rows as well), the steps of a held reference: losses, reference points and
    // held-out rewards to rounding, on feedback and on pairs; no reference held.
    assert!(log.contains("k_pre: KTO (kto loss, β = 0.5, the reference's log-probabilities of the ") && log.contains(&format!("examples the steps draw (of {train}), of their mismatched rows for KTO's reference point and of 16 held-out examples precomputed in")), "{log}");
    for (held, pre) in [("k", "k_pre"), ("az", "az_pre"), ("pairs", "pairs_pre")] {
        let (a, b) = (metrics(&out.join("kto").join(held)), metrics(&out.join("kto").join(pre)));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            // (APO-zero's `kl` is the held-out sampled one, which needs a reference: not logged.)
            let keys: &[&str] = if held == "az" { &["loss", "eval_rewards/margins"] } else { &["loss", "kl", "eval_rewards/margins"] };
            for &key in keys {
                let (p, q) = (x[key].as_f64(), y[key].as_f64());
                assert_eq!(p.is_some(), q.is_some(), "{pre} step {}: {key}", x["step"]);
                assert!(p.zip(q).is_none_or(|(p, q)| (p - q).abs() < 1e-5), "{pre} step {}: {key} {p:?} vs {q:?}", x["step"]);
            }
        }
        // `eval_data` on feedback (the stage's own set): its held-out margins, held or precomputed.
        for (dir, rows) in [(held, &a), (pre, &b)].into_iter().filter(|_| held == "k") {
            assert_eq!(rows.iter().filter(|m| m["eval_rewards/margins/fb"].is_number()).count(), 2, "{dir}");
            for m in rows.iter().filter(|m| m["eval_rewards/margins"].is_number()) {
                assert_eq!(m["eval_rewards/margins/fb"], m["eval_rewards/margins"], "{dir}: {m}");
            }
        }
        // (A reference point above zero at some steps: the precomputed rows are read.)
        assert!(held == "az" || b.iter().any(|m| m["kl"].as_f64().unwrap() > 0.01), "{pre}: {b:?}");
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("kto").join(pre).join("report.json")).unwrap()).unwrap();
        assert_eq!(report["reference_weight_bytes"], 0, "{pre}");
        // The log's count of what was precomputed is the report's: examples on feedback, pairs on pairs.
        let (key, noun) = if pre == "pairs_pre" { ("precomputed_reference_pairs", "pairs") } else { ("precomputed_reference_examples", "examples") };
        let said = log.split(&format!("{pre}: ")).find_map(|l| l.split("the reference's log-probabilities of the ").nth(1)?.split(&format!(" {noun} the steps draw")).next()?.replace(',', "").parse::<u64>().ok());
        assert_eq!(report[key].as_u64(), said, "{pre}: {key}");
    }
}

/// `roux check` on unpaired feedback says how many completions are desirable, and warns (W0407)
/// when the weighted counts fall outside the 1 to 4/3 KTO recommends, with a weight that brings
/// them inside; the suggested weight then checks clean.
#[test]
fn check_counts_feedback_labels_and_weighs_their_balance() {
    let said = |weights: &str| {
        let text = format!("experiment \"fb\" {{\n  data fb = feedback(\"data/feedback.jsonl\")\n  model lm = transformer {{ vocab = 256, context = 64, d_model = 32, layers = 1, heads = 2 }}\n  stage k = dpo(lm, fb) {{ loss = kto, steps = 5{weights} }}\n}}\n");
        let c = roux::frontend::compile_source(roux::frontend::Source { path: fixture("fb.roux"), text });
        c.diagnostics.iter().map(|d| format!("{} {} | {}", d.code, d.message, d.hint.clone().unwrap_or_default())).collect::<Vec<_>>()
    };
    let note = "N0404 data `fb`: 60 examples (40 desirable, 20 not), 23 bytes each on average, the longest 27 (prompt template, response and end marker) | a stage warns when some are longer than its model's context";
    assert_eq!(
        said(""),
        vec![
            note.to_string(),
            "W0407 `fb` holds 40 desirable and 20 undesirable examples, with weights 1 and 1: desirable_weight × desirable / (undesirable_weight × undesirable) is 2.000, outside the 1 to 4/3 that KTO recommends | `undesirable_weight = 1.71` brings it to about 7/6, inside that range".to_string()
        ]
    );
    assert_eq!(said(", undesirable_weight = 1.71"), vec![note.to_string()]);
    // The YAML form is kept as roux's form with the file named absolutely, which checks anywhere.
    let yaml = "experiment: fb\ndata fb: feedback(\"data/feedback.jsonl\")\n";
    let c = roux::frontend::compile_source(roux::frontend::Source { path: fixture("fb.yaml"), text: yaml.into() });
    let kept = c.resolved.unwrap();
    assert!(kept.contains(&format!("feedback(\"{}\")", fixture("data/feedback.jsonl").display())), "{kept}");
    // 40 × 0.25 / 20 = 0.5: the desirable ones need the weight, 7/6 × 20 / 40 = 0.583.
    assert!(said(", desirable_weight = 0.25")[1].ends_with("is 0.500, outside the 1 to 4/3 that KTO recommends | `desirable_weight = 0.583` brings it to about 7/6, inside that range"));
}

/// `dpo { loss = … }` trains with TRL's loss of that name: at the first step the policy is its
/// reference (h = 0), so the logged loss is each formula at 0 — ln 2 for sigmoid with and without
/// label smoothing and for robust, 1/(2β)² for IPO, 1 for hinge, ½ for KTO, 1 for APO-zero and
/// APO-down, 2 ln 2 for NCA, 1/(2β²) for SPPO, −ln 2 − ½·ln(ε(1 − ε)) for EXO (ε = 1e-3),
/// ½·ln 2 + ½ for DiscoPOP, 2 ln 2 for BCO, ln 2 for both AOTs — and then it falls (NCA's least: its chosen term is smallest at
/// β·r_c = ln 2, 0.955 with the rejected term gone). Smoothing on a loss without it is refused
/// with both names, as is another loss's option.
#[test]
fn dpo_loss_variants_train_from_their_formulas_at_zero() {
    let out = scratch("dpo-losses");
    let recipe = out.join("l.roux");
    let text = |extra: &str| {
        format!(
            r#"experiment "losses" {{
          seed = 7
          data prefs = synthetic.preferences {{ tasks = [uppercase], pairs = 120, max_len = 3 }}
          model lm = transformer {{ vocab = 256, context = 24, d_model = 32, layers = 1, heads = 2, dropout = 0 }}
          stage cdpo = dpo(lm, prefs) {{ loss = sigmoid, label_smoothing = 0.1, beta = 0.5 {extra} }}
          stage robust = dpo(lm, prefs) {{ loss = robust, label_smoothing = 0.2, beta = 0.5 {extra} }}
          stage ipo = dpo(lm, prefs) {{ loss = ipo, beta = 0.25 {extra} }}
          stage hinge = dpo(lm, prefs) {{ loss = hinge, beta = 0.5 {extra} }}
          stage kto = dpo(lm, prefs) {{ loss = kto, beta = 0.5 {extra} }}
          stage apo_zero = dpo(lm, prefs) {{ loss = apo_zero, beta = 0.5 {extra} }}
          stage apo_down = dpo(lm, prefs) {{ loss = apo_down, beta = 0.5 {extra} }}
          stage nca = dpo(lm, prefs) {{ loss = nca_pair, beta = 0.5 {extra} }}
          stage sppo = dpo(lm, prefs) {{ loss = sppo_hard, beta = 0.5 {extra} }}
          stage exo = dpo(lm, prefs) {{ loss = exo_pair, beta = 0.5 {extra} }}
          stage discopop = dpo(lm, prefs) {{ loss = discopop, discopop_tau = 0.05, beta = 0.5 {extra} }}
          stage bco = dpo(lm, prefs) {{ loss = bco_pair, beta = 0.5 {extra} }}
          stage aot = dpo(lm, prefs) {{ loss = aot, beta = 0.5, accumulate = 2 {extra} }}
          stage aot_unpaired = dpo(lm, prefs) {{ loss = aot_unpaired, label_smoothing = 0.1, beta = 0.5 {extra} }}
          stage wpo = dpo(lm, prefs) {{ use_weighting = true, beta = 0.5 {extra} }}
        }}"#
        )
    };
    std::fs::write(&recipe, text(", steps = 40, batch = 16, log_every = 1, eval_every = 40, eval_examples = 2, max_new = 2, optimizer = adamw { lr = 3e-3 }")).unwrap();
    let log = run_ok(&recipe, &out);
    // AOT sorts each micro-batch's pairs, as TRL sorts each device's batch: the stage says so.
    assert!(log.contains("aot: DPO (aot loss, β = 0.5, sorted within each micro-batch of 8 pairs)"), "{log}");
    // WPO weighs each pair's ln 2 by its responses' weights, which are not all 1, and still falls.
    assert!(log.contains("wpo: DPO (sigmoid loss, β = 0.5, pairs weighed by the policy's likelihood of both responses (WPO))"), "{log}");
    let wpo: Vec<f64> = metrics(&out.join("losses/wpo")).iter().filter_map(|x| x["loss"].as_f64()).collect();
    assert!(wpo[0] > 0.0 && (wpo[0] - std::f64::consts::LN_2).abs() > 1e-4, "WPO's first loss {} against ln 2", wpo[0]);
    assert!(wpo[30..].iter().sum::<f64>() / 10.0 < 0.8 * wpo[0], "WPO's loss did not fall: {wpo:?}");
    let ln2 = std::f64::consts::LN_2;
    for (stage, at_zero, falls_to) in [("cdpo", ln2, 0.8), ("robust", ln2, 0.8), ("ipo", 4.0, 0.8), ("hinge", 1.0, 0.8), ("kto", 0.5, 0.8), ("apo_zero", 1.0, 0.8), ("apo_down", 1.0, 0.8), ("nca", 2.0 * ln2, 0.95), ("sppo", 2.0, 0.8), ("exo", -ln2 - 0.5 * (1e-3f64 * 0.999).ln(), 0.8), ("discopop", 0.5 * ln2 + 0.5, 0.8), ("bco", 2.0 * ln2, 0.8), ("aot", ln2, 0.8), ("aot_unpaired", ln2, 0.8)] {
        let m = metrics(&out.join("losses").join(stage));
        let losses: Vec<f64> = m.iter().filter_map(|x| x["loss"].as_f64()).collect();
        assert!((losses[0] - at_zero).abs() < 1e-5, "{stage}: first loss {} (want {at_zero})", losses[0]);
        let tail = losses[losses.len() - 10..].iter().sum::<f64>() / 10.0;
        assert!(tail < falls_to * at_zero, "{stage}: the loss did not fall: {losses:?}");
    }
    // KTO's reference point starts at 0 (the policy is its reference) and is never negative.
    let kl: Vec<f64> = metrics(&out.join("losses/kto")).iter().filter_map(|x| x["kl"].as_f64()).collect();
    assert!(kl.len() == 40 && kl[0] == 0.0 && kl.iter().all(|&z| z >= 0.0), "{kl:?}");
    // SimPO and ORPO load no reference. With one pair a step, each logged value is exact: the
    // margin is β·h, so SimPO's loss is −log σ(margin − γ); ORPO's NLL is minus the chosen
    // response's average log-probability (rewards/chosen / β), its log odds ratio follows from
    // both rewards, and its loss is NLL − β·log odds ratio.
    let free = out.join("free.roux");
    std::fs::write(
        &free,
        r#"experiment "free" {
          seed = 7
          data prefs = synthetic.preferences { tasks = [uppercase], pairs = 120, max_len = 3 }
          model lm = transformer { vocab = 256, context = 24, d_model = 32, layers = 1, heads = 2, dropout = 0 }
          stage simpo = dpo(lm, prefs) { loss = simpo, beta = 2, gamma = 0.5, steps = 4, batch = 1, log_every = 1, eval_every = 4, eval_examples = 2, max_new = 2 }
          stage orpo = dpo(lm, prefs) { loss = orpo, beta = 0.1, steps = 4, batch = 1, log_every = 1, eval_every = 4, eval_examples = 2, max_new = 2 }
          stage rpo = dpo(lm, prefs) { rpo_alpha = 0.5, beta = 0.5, steps = 4, batch = 1, log_every = 1, eval_every = 4, eval_examples = 2, max_new = 2 }
          stage orpo16 = dpo(lm, prefs) { loss = orpo, beta = 0.1, steps = 40, batch = 16, log_every = 1, eval_every = 40, eval_examples = 2, max_new = 2, optimizer = adamw { lr = 3e-3 } }
        }"#,
    )
    .unwrap();
    let log = run_ok(&free, &out);
    assert!(log.contains("simpo: DPO (simpo loss, β = 2, γ = 0.5, no reference)") && log.contains("orpo: DPO (orpo loss, β = 0.1, no reference)"), "{log}");
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    for m in metrics(&out.join("free/simpo")) {
        let (loss, margin) = (m["loss"].as_f64().unwrap(), m["rewards/margins"].as_f64().unwrap());
        assert!((loss + sig(margin - 0.5).ln()).abs() < 1e-4, "SimPO: loss {loss}, margin {margin}");
    }
    for m in metrics(&out.join("free/orpo")) {
        let f = |k: &str| m[k].as_f64().unwrap();
        let (ac, ar) = (f("rewards/chosen") / 0.1, f("rewards/rejected") / 0.1);
        let odds = |a: f64| a - (1.0 - a.exp()).ln();
        assert!((f("nll_loss") + ac).abs() < 1e-4, "ORPO: nll {} vs average log-probability {ac}", f("nll_loss"));
        assert!((f("log_odds_ratio") - sig(odds(ac) - odds(ar)).ln()).abs() < 1e-4, "ORPO: {m}");
        assert!((f("loss") - (f("nll_loss") - 0.1 * f("log_odds_ratio"))).abs() < 1e-4, "ORPO: {m}");
    }
    // RPO: DPO's loss plus 0.5 × the chosen response's NLL per token.
    assert!(log.contains("rpo: DPO (sigmoid loss, β = 0.5, NLL weight 0.5)"), "{log}");
    for m in metrics(&out.join("free/rpo")) {
        let f = |k: &str| m[k].as_f64().unwrap();
        assert!(f("nll_loss") > 1.0 && (f("loss") - 0.5 * f("nll_loss") + sig(f("rewards/margins")).ln()).abs() < 1e-4, "RPO: {m}");
    }
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("free/orpo/report.json")).unwrap()).unwrap();
    assert_eq!((report["reference_weight_bytes"].as_u64(), report["loss"].as_str()), (Some(0), Some("orpo")), "{report}");
    // The plan holds no reference for them: 6N FLOPs a token (a reference would add 2N).
    let c = roux::frontend::compile(&free).unwrap();
    let p = roux::plan::plan(c.recipe.as_ref().unwrap());
    let s = p.stages.iter().find(|s| s.name == "orpo16").unwrap();
    assert!((s.flops / (6.0 * p.models[0].params_total as f64 * s.tokens as f64) - 1.0).abs() < 1e-12, "{s:?}");
    // ORPO is SFT as well: the chosen responses' NLL falls, and the log odds ratio rises.
    let m = metrics(&out.join("free/orpo16"));
    let mean = |rows: &[serde_json::Value], k: &str| rows.iter().map(|v| v[k].as_f64().unwrap()).sum::<f64>() / rows.len() as f64;
    let (first, last) = (&m[..5], &m[m.len() - 5..]);
    assert!(mean(last, "nll_loss") < 0.7 * mean(first, "nll_loss"), "nll {} → {}", mean(first, "nll_loss"), mean(last, "nll_loss"));
    assert!(mean(last, "log_odds_ratio") > mean(first, "log_odds_ratio"), "log odds ratio {} → {}", mean(first, "log_odds_ratio"), mean(last, "log_odds_ratio"));

    std::fs::write(&recipe, text(", steps = 5").replace("loss = hinge, beta", "loss = hinge, label_smoothing = 0.1, beta")).unwrap();
    let o = roux(&["check", recipe.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("error[E0246]: `label_smoothing = 0.1` has no meaning for `loss = hinge`") && err.contains("label smoothing belongs to `loss = sigmoid` (conservative DPO), `robust`, `simpo`, `exo_pair`, `aot` and `aot_unpaired`"), "{err}");
    std::fs::write(&recipe, text(", steps = 5").replace("loss = ipo, beta", "loss = ipo, gamma = 1, beta")).unwrap();
    let o = roux(&["check", recipe.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("error[E0246]: `gamma` is SimPO's target margin and has no meaning for `loss = ipo`") && err.contains("use `loss = simpo`, or leave `gamma` out"), "{err}");
    std::fs::write(&recipe, text(", steps = 5").replace("loss = ipo, beta", "loss = ipo, discopop_tau = 0.1, beta")).unwrap();
    let o = roux(&["check", recipe.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("error[E0246]: `discopop_tau` is DiscoPOP's temperature and has no meaning for `loss = ipo`") && err.contains("use `loss = discopop`, or leave `discopop_tau` out"), "{err}");
    std::fs::write(&recipe, std::fs::read_to_string(&free).unwrap().replace("loss = orpo, beta = 0.1, steps = 4", "loss = orpo, rpo_alpha = 1, beta = 0.1, steps = 4")).unwrap();
    let o = roux(&["check", recipe.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("error[E0246]: `rpo_alpha` adds the chosen responses' NLL, which `loss = orpo` already has") && err.contains("leave `rpo_alpha` out: ORPO's β weighs its preference term against that NLL"), "{err}");
}

/// Packing (`finetune { packing = true }`) puts several examples in one row; each must get the
/// logits it gets alone — positions restart (learned and rotary), attention stays within an
/// example, the padding after them changes nothing — on a GPT-2-style model, a Llama-style one
/// (rope, RMSNorm, SwiGLU), the same with a 4-token attention window in its second block (and
/// with Gemma 2's soft-capped attention, written out), and a top-k MoE.
#[test]
fn a_packed_row_gives_each_example_its_own_logits() {
    use roux::posttrain::examples::Seq;
    use roux::run::kit::packing::{batch, pack};
    for (file, ctx, window, cap) in [("tiny-lifecycle.roux", 48, None, None), ("tiny-llama.roux", 32, None, None), ("tiny-llama.roux", 32, Some(4), None), ("tiny-llama.roux", 32, Some(4), Some(0.5)), ("tiny-moe-topk.roux", 32, None, None)] {
        let r = recipe(file);
        tch::manual_seed(5);
        let spec = roux::recipe::ModelSpec { window, window_layers: window.map(|_| vec![1]), attn_softcap: cap, ..r.model("lm").unwrap().clone() };
        let m = Model::new(&spec, Device::Cpu).unwrap();
        // Lengths (tokens) 13, 9, 20, 6, 30 into rows of `ctx` inputs: several share a row.
        let seqs: Vec<Seq> = [13usize, 9, 20, 6, 30]
            .iter()
            .enumerate()
            .map(|(i, &n)| Seq { tokens: (0..n).map(|j| ((j * 37 + i * 11) % 251) as i64 + 1).collect(), weights: vec![1.0; n - 1], prompt_len: 0 })
            .collect();
        let rows = pack(&seqs, ctx);
        assert!(rows.len() < seqs.len(), "{file}: nothing was packed");
        let refs: Vec<_> = rows.iter().collect();
        let (b, packing) = batch(&refs, Device::Cpu);
        let packed = m.forward_packed(&b.x, &packing, false);
        let mut seen = 0;
        for (k, row) in rows.iter().enumerate() {
            let mut start = 0;
            while start < row.ids.len() {
                let end = start + row.ids[start..].iter().take_while(|&&id| id == row.ids[start]).count();
                let alone = m.forward(&Tensor::from_slice(&row.x[start..end]).view([1, -1]), false);
                let here = packed.get(k as i64).narrow(0, start as i64, (end - start) as i64);
                let diff = (alone.get(0) - here).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "{file}: row {k}, example at {start}..{end}: logits differ by {diff}");
                seen += 1;
                start = end;
            }
        }
        assert_eq!(seen, seqs.len(), "{file}");
    }
    // The plan counts the packed rows' attention mask: float32, batch × context² (8 × 48²).
    let dir = scratch("packing-plan");
    let memory = |packing: bool| {
        let text = std::fs::read_to_string(fixture("tiny-lifecycle.roux")).unwrap().replace("../../data/", "../../../data/");
        let text = if packing { text.replace("stage sft = finetune(pretrain.model, instr) {", "stage sft = finetune(pretrain.model, instr) {\n    packing = true") } else { text };
        std::fs::write(dir.join("r.roux"), text).unwrap();
        let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
        let r = c.recipe.unwrap_or_else(|| panic!("{:?}", c.diagnostics));
        let roux::recipe::StageKind::Finetune(f) = &r.stage("sft").unwrap().kind else { panic!("sft is a finetune stage") };
        assert_eq!((f.packing, f.opt.batch), (packing, 8));
        roux::plan::plan(&r).stages.iter().find(|s| s.name == "sft").unwrap().memory_bytes
    };
    assert_eq!(memory(true) - memory(false), 4 * 8 * 48 * 48);
}

/// NEFTune (`finetune { neftune = α }`): uniform noise of ±α/√(T·d) on the token embeddings in
/// training passes only — the held-out loss before training is the plain model's exactly, the
/// first training step's loss is not — as transformers adds it.
#[test]
fn neftune_adds_bounded_noise_to_training_passes_only() {
    tch::manual_seed(3);
    let e = Tensor::zeros([4, 50, 64], (Kind::Float, Device::Cpu));
    let noise = roux::run::model::neftune_noise(&e, 5.0);
    let bound = 5.0 / (50.0f64 * 64.0).sqrt();
    let (max, mean, std) = (noise.abs().max().double_value(&[]), noise.mean(Kind::Double).double_value(&[]), noise.std(true).double_value(&[]));
    assert!(max <= bound && max > 0.99 * bound, "max {max}, bound {bound}");
    assert!(mean.abs() < bound / 50.0 && (std / (bound / 3f64.sqrt()) - 1.0).abs() < 0.03, "mean {mean}, std {std}");

    let out = scratch("neftune");
    let recipe = out.join("n.roux");
    let stage = |name: &str, extra: &str| format!("stage {name} = finetune(lm, instr) {{ steps = 5, batch = 8, log_every = 1, eval_every = 5, eval_examples = 16, max_new = 2{extra} }}");
    let text = std::fs::read_to_string(fixture("tiny-sft.roux")).unwrap().replace("../../data/", "../../../data/");
    let head = &text[..text.find("  stage sft").unwrap()];
    std::fs::write(&recipe, format!("{head}  {}\n  {}\n}}\n", stage("plain", ""), stage("noisy", ", neftune = 5"))).unwrap();
    let log = run_ok(&recipe, &out);
    assert!(log.contains("NEFTune α = 5)"), "{log}");
    let report = |s: &str| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(out.join("tiny-sft").join(s).join("report.json")).unwrap()).unwrap() };
    assert_eq!(report("plain")["val_loss"]["before"], report("noisy")["val_loss"]["before"]);
    assert_eq!(report("noisy")["neftune"].as_f64(), Some(5.0));
    let first = |s: &str| metrics(&out.join("tiny-sft").join(s))[0]["loss"].as_f64().unwrap();
    let (plain, noisy) = (first("plain"), first("noisy"));
    assert!((plain - noisy).abs() > 1e-6 && (plain - noisy).abs() < 0.5, "first losses {plain} and {noisy}");
}

/// `reward_model { center_rewards = c }` (TRL's center_rewards_coefficient): the loss is
/// Bradley–Terry plus c·mean((r_c + r_r)²). With one pair a step the logged loss is exactly
/// −log σ(r_c − r_r) + c·(r_c + r_r)² of the logged scores; over a run the scores' sum stays
/// nearer zero than without it.
#[test]
fn centred_reward_models_add_the_squared_score_sum() {
    let out = scratch("center-rewards");
    let recipe = out.join("c.roux");
    std::fs::write(
        &recipe,
        r#"experiment "center" {
          seed = 7
          data prefs = synthetic.preferences { tasks = [uppercase], pairs = 120, max_len = 3 }
          model lm = transformer { vocab = 256, context = 24, d_model = 32, layers = 1, heads = 2, dropout = 0 }
          stage one = reward_model(lm, prefs) { center_rewards = 0.5, steps = 4, batch = 1, log_every = 1, eval_every = 4 }
          stage plain = reward_model(lm, prefs) { steps = 30, batch = 8, log_every = 1, eval_every = 30, optimizer = adamw { lr = 3e-3 } }
          stage centred = reward_model(lm, prefs) { center_rewards = 10, steps = 30, batch = 8, log_every = 1, eval_every = 30, optimizer = adamw { lr = 3e-3 } }
        }"#,
    )
    .unwrap();
    run_ok(&recipe, &out);
    for m in metrics(&out.join("center/one")) {
        let f = |k: &str| m[k].as_f64().unwrap();
        let (c, r) = (f("rewards/chosen"), f("rewards/rejected"));
        let want = (1.0 + (r - c).exp()).ln() + 0.5 * (c + r).powi(2);
        assert!((f("loss") - want).abs() < 1e-4, "loss {} vs {want}: {m}", f("loss"));
    }
    let drift = |s: &str| {
        let m = metrics(&out.join("center").join(s));
        m[m.len() - 10..].iter().map(|x| (x["rewards/chosen"].as_f64().unwrap() + x["rewards/rejected"].as_f64().unwrap()).abs()).sum::<f64>() / 10.0
    };
    let (plain, centred) = (drift("plain"), drift("centred"));
    assert!(centred < 0.5 * plain, "|r_c + r_r| over the last 10 steps: {centred} centred, {plain} plain");
}

/// `accumulate = k` on PPO and GRPO: the rollouts are sampled whole, the scoring passes and every
/// update's forward and backward run in k micro-batches, each weighing its share of the tokens
/// (PPO's and DAPO's per-token means) or of the completions (GRPO's per-completion mean), so the
/// steps are the same as in one pass: every logged number and the final weights within 1e-5.
/// The plan then holds one micro-batch's activations: less memory, equal to `plan --world 1`.
#[test]
fn ppo_and_grpo_in_micro_batches_take_the_same_steps() {
    let out = scratch("rl-accumulate");
    let recipe = out.join("acc.roux");
    let ppo = |name: &str, extra: &str| format!("  stage {name} = ppo(policy = lm, reward = rm.model, prompts = instr) {{ steps = 4, batch = 8, minibatches = 2, epochs = 2, entropy = 0.01, max_new = 4, log_every = 1, eval_every = 4, eval_examples = 4, optimizer = adamw {{ lr = 3e-3 }}{extra} }}\n");
    let grpo = |name: &str, extra: &str| format!("  stage {name} = grpo(policy = lm, prompts = instr) {{ steps = 4, batch = 8, group = 4, epochs = 2, beta = 0.1, reward = format + 0.5 * length, max_new = 4, log_every = 1, eval_every = 4, eval_examples = 4, optimizer = adamw {{ lr = 3e-3 }}{extra} }}\n");
    std::fs::write(
        &recipe,
        format!(
            "experiment \"acc\" {{\n  seed = 5\n  data instr = synthetic.instructions {{ tasks = [uppercase], examples = 100, max_len = 3 }}\n  data prefs = synthetic.preferences {{ tasks = [uppercase], pairs = 60, max_len = 3 }}\n  model lm = transformer {{ vocab = 256, context = 24, d_model = 32, layers = 1, heads = 2, dropout = 0 }}\n  stage rm = reward_model(lm, prefs) {{ steps = 3, batch = 8 }}\n{}{}{}{}{}{}}}\n",
            ppo("p1", ""),
            ppo("p4", ", accumulate = 4"),
            grpo("g1", ""),
            grpo("g4", ", accumulate = 4"),
            grpo("d1", ", loss = dapo"),
            grpo("d4", ", loss = dapo, accumulate = 2"),
        ),
    )
    .unwrap();
    run_ok(&recipe, &out);
    let weights = |s: &str| {
        let mut t = Tensor::read_safetensors(out.join("acc").join(s).join("model.safetensors")).unwrap();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let keys: &[&str] = &["policy_loss", "value_loss", "entropy", "clip_fraction", "kl", "reward", "grad_norm", "loss"];
    for (one, micro) in [("p1", "p4"), ("g1", "g4"), ("d1", "d4")] {
        let (a, b) = (metrics(&out.join("acc").join(one)), metrics(&out.join("acc").join(micro)));
        assert_eq!((a.len(), b.len()), (4, 4), "{one}, {micro}");
        let mut compared = 0;
        for (x, y) in a.iter().zip(&b) {
            for k in keys {
                if let (Some(u), Some(v)) = (x[k].as_f64(), y[k].as_f64()) {
                    assert!((u - v).abs() < 1e-5, "{micro} vs {one}, step {}: {k} {v} vs {u}", x["step"]);
                    compared += 1;
                }
            }
        }
        assert!(compared >= 4 * 5, "{one}: only {compared} numbers compared");
        // The updates did something, and the same thing.
        assert!(a.iter().any(|m| m["clip_fraction"].as_f64().unwrap() > 0.0) && a.iter().all(|m| m["kl"].as_f64().unwrap().is_finite()), "{one}: {a:?}");
        let worst = weight_difference(&weights(one), &weights(micro));
        assert!(worst < 1e-5, "{micro} vs {one}: weights differ by {worst:e}");
    }
    // The plan holds one micro-batch's activations at a time, as each process's plan does.
    let plan = |args: &[&str]| serde_json::from_slice::<serde_json::Value>(&roux(&[&["plan", recipe.to_str().unwrap(), "--json"], args].concat()).stdout).unwrap();
    let (whole, world) = (plan(&[]), plan(&["--world", "1"]));
    let memory = |s: usize| whole["stages"][s]["memory_bytes"].as_u64().unwrap();
    // (batch 8 in 4 micro-batches: 2 rows each)
    for (one, micro) in [(1, 2), (3, 4)] {
        assert!(memory(micro) < memory(one), "{}", whole["stages"]);
        let process = world["processes"].as_array().unwrap().iter().find(|p| p["stage"] == whole["stages"][micro]["name"]).unwrap();
        assert_eq!((process["total_bytes"].as_u64(), process["micro_batch"].as_u64()), (Some(memory(micro)), Some(2)), "{process}");
    }
}

/// `mask_truncated = true` (DAPO's overlong filtering, TRL's `mask_truncated_completions`): a
/// completion cut off before the end marker takes no part in the loss. One prompt, 16 answers of
/// at most one token, rewarded 1 for stopping (`format`): e of them stop. On the first step the
/// policy is its reference and the ratio 1, so the loss is −mean over the completions of A·[kept]:
/// 0 when every completion counts (a group's advantages sum to 0); −e·A_stop/16 with the others
/// masked, A_stop = (1 − p)/(s + 1e-4), p = e/16, s² = 16·p(1 − p)/15 (the sample variance).
#[test]
fn grpo_masks_truncated_completions_out_of_the_loss() {
    let out = scratch("grpo-truncated");
    let recipe = out.join("r.roux");
    std::fs::write(&recipe, std::fs::read_to_string(fixture("tiny-grpo.roux")).unwrap().replace("../../data/", "../../../data/")).unwrap();
    let first = |mask: bool| {
        let set = ["rl.max_new=1", "rl.steps=2", "rl.eval_every=2", "rl.group=16", "rl.batch=16", "rl.reward=format", if mask { "rl.mask_truncated=true" } else { "rl.mask_truncated=false" }];
        let args: Vec<&str> = set.iter().flat_map(|s| ["--set", s]).collect();
        let o = roux(&[&["run", recipe.to_str().unwrap(), "--out", out.to_str().unwrap()], &args[..]].concat());
        let log = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(0), "{log}");
        assert_eq!(log.contains("truncated completions masked"), mask, "{log}");
        metrics(&out.join("tiny-grpo/rl"))[0].clone()
    };
    let (masked, whole) = (first(true), first(false));
    let truncated = masked["truncated"].as_f64().unwrap();
    assert_eq!(whole["truncated"].as_f64(), Some(truncated), "the first step's samples differ");
    let e = (16.0 * (1.0 - truncated)).round();
    assert!(e > 0.0 && e < 16.0, "{e} of 16 stopped: no signal to test with");
    let p = e / 16.0;
    let want = -e * (1.0 - p) / ((16.0 * p * (1.0 - p) / 15.0).sqrt() + 1e-4) / 16.0;
    assert!((masked["loss"].as_f64().unwrap() - want).abs() < 1e-5, "masked: loss {} (want {want}, {e} stopped)", masked["loss"]);
    assert!(whole["loss"].as_f64().unwrap().abs() < 1e-6, "unmasked: loss {}", whole["loss"]);
}

/// `matches("regex")` rewards a response (up to the end marker) by a regular expression. A term
/// that always matches (`matches("")`) shifts every reward by its weight and leaves the
/// advantages, so `format - matches("")` trains exactly as `format` with each step's reward 1
/// lower; and a policy rewarded for answers that start with a digit learns to give more of them.
#[test]
fn grpo_rewards_a_regular_expression() {
    let out = scratch("grpo-matches");
    let recipe = out.join("r.roux");
    std::fs::write(&recipe, std::fs::read_to_string(fixture("tiny-grpo.roux")).unwrap().replace("../../data/", "../../../data/")).unwrap();
    let run = |reward: &str, steps: &str| {
        let set = [format!("rl.reward={reward}"), format!("rl.steps={steps}"), "rl.eval_every=6".to_string()];
        let args: Vec<&str> = set.iter().flat_map(|s| ["--set", s.as_str()]).collect();
        let o = roux(&[&["run", recipe.to_str().unwrap(), "--out", out.to_str().unwrap()], &args[..]].concat());
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        metrics(&out.join("tiny-grpo/rl"))
    };
    let plain = run("format", "6");
    let shifted = run("format - matches(\"\")", "6");
    for (a, b) in plain.iter().zip(&shifted) {
        let f = |m: &serde_json::Value, k: &str| m[k].as_f64().unwrap();
        assert!((f(a, "reward") - 1.0 - f(b, "reward")).abs() < 1e-12 && f(a, "loss") == f(b, "loss"), "step {}: {a} vs {b}", a["step"]);
    }
    let digits = run("matches(\"^[0-9]\")", "24");
    let mean = |rows: &[serde_json::Value]| rows.iter().map(|m| m["reward"].as_f64().unwrap()).sum::<f64>() / rows.len() as f64;
    let (first, last) = (mean(&digits[..6]), mean(&digits[18..]));
    assert!(last > first + 0.1, "answers starting with a digit: {first} → {last}");
}

/// What `accumulate` is for: a GRPO step over 64 completions of a 1.7M-parameter model holds
/// one micro-batch's activations at a time, so its peak memory falls by at least a quarter of
/// what the plan says one pass in 8 saves (the plan bounds every sequence at the full context;
/// measured here: 136 MiB of a planned 252). `ROUX_MALLOC=exact` makes resident memory follow
/// the live tensors.
#[test]
fn grpo_in_micro_batches_holds_less_memory() {
    let out = scratch("grpo-accumulate-memory");
    let recipe = out.join("r.roux");
    let stage = |name: &str, extra: &str| format!("  stage {name} = grpo(policy = lm, prompts = instr) {{ steps = 2, batch = 64, group = 8, max_new = 48, reward = length, eval_every = 2, eval_examples = 2{extra} }}\n");
    std::fs::write(
        &recipe,
        format!(
            "experiment \"accmem\" {{\n  seed = 3\n  data instr = synthetic.instructions {{ tasks = [reverse, uppercase], examples = 200, max_len = 8 }}\n  model lm = transformer {{ vocab = 256, context = 96, d_model = 256, layers = 2, heads = 4, dropout = 0 }}\n{}{}}}\n",
            stage("whole", ""),
            stage("eighths", ", accumulate = 8")
        ),
    )
    .unwrap();
    let peak = |s: &str| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_roux")).args(["run", recipe.to_str().unwrap(), "--out", out.to_str().unwrap(), "--stage", s, "-q"]).env("ROUX_MALLOC", "exact").output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("accmem").join(s).join("report.json")).unwrap()).unwrap();
        report["peak_host_memory_bytes"].as_u64().unwrap()
    };
    let plan = roux(&["plan", recipe.to_str().unwrap(), "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let saves = plan["stages"][0]["memory_bytes"].as_u64().unwrap() - plan["stages"][1]["memory_bytes"].as_u64().unwrap();
    assert!(saves > 200 << 20, "the plan must save much: {saves}");
    let (whole, eighths) = (peak("whole"), peak("eighths"));
    assert!(eighths + saves / 4 < whole, "peak memory: {whole} bytes whole, {eighths} in 8 micro-batches; the plan saves {saves}");
}

/// A preference file's `margin` (TRL's RewardTrainer column, Llama 2's margin loss): the reward
/// model learns −log σ(r_c − r_r − m). Its head starts at zero, so the first loss is
/// ln(1 + e^m) — ln(1 + e²) = 2.1269280 for margins of 2, where pairs without one start at
/// ln 2 — and the margin pushes the scores further apart than the same pairs without it. Check
/// says what margins the file holds.
#[test]
fn reward_models_learn_the_margins_of_their_pairs() {
    let dir = scratch("reward-margins");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let lines: Vec<String> = std::fs::read_to_string(fixture("data/preferences.jsonl")).unwrap().lines().map(|l| {
        let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
        v["margin"] = serde_json::json!(2.0);
        v.to_string()
    }).collect();
    std::fs::write(dir.join("data/pm.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::copy(fixture("data/preferences.jsonl"), dir.join("data/p.jsonl")).unwrap();
    let stage = |name: &str, data: &str| format!("  stage {name} = reward_model(lm, {data}) {{ steps = 30, batch = 8, log_every = 1, eval_every = 30, optimizer = adamw {{ lr = 3e-3 }} }}\n");
    let fields = "{ prompt = \"question\", chosen = \"better\", rejected = \"worse\" }";
    let recipe = dir.join("m.roux");
    std::fs::write(
        &recipe,
        format!(
            "experiment \"margins\" {{\n  seed = 4\n  data pm = preferences(\"data/pm.jsonl\") {fields}\n  data p = preferences(\"data/p.jsonl\") {fields}\n  model lm = transformer {{ vocab = 256, context = 32, d_model = 32, layers = 1, heads = 2, dropout = 0 }}\n{}{}}}\n",
            stage("with", "pm"),
            stage("without", "p")
        ),
    )
    .unwrap();
    let c = roux::frontend::compile(&recipe).unwrap();
    let notes: Vec<&str> = c.diagnostics.iter().filter(|d| d.code == "N0404").map(|d| d.message.as_str()).collect();
    assert!(notes.iter().any(|n| n.contains("60 pairs (margins 2 to 2, mean 2)")) && notes.iter().any(|n| n.contains("60 pairs") && !n.contains("margins")), "{notes:?}");
    run_ok(&recipe, &dir);
    let (with, without) = (metrics(&dir.join("margins/with")), metrics(&dir.join("margins/without")));
    let first = |m: &[serde_json::Value]| m[0]["loss"].as_f64().unwrap();
    assert!((first(&with) - (1.0 + 2f64.exp()).ln()).abs() < 1e-6 && (first(&without) - std::f64::consts::LN_2).abs() < 1e-6, "{} {}", first(&with), first(&without));
    let gap = |m: &[serde_json::Value]| m[20..].iter().map(|x| x["rewards/chosen"].as_f64().unwrap() - x["rewards/rejected"].as_f64().unwrap()).sum::<f64>() / 10.0;
    assert!(gap(&with) > gap(&without), "score gaps: {} with margins of 2, {} without", gap(&with), gap(&without));
}

/// A GRPO reward may weigh several reward models: each is loaded and scores every completion,
/// and each term reads its own. On the first step (the same samples in every stage) the reward
/// of `reward_model(a) + reward_model(b)` is the sum of each alone, and `0 * reward_model(a) +
/// reward_model(b)` is `b`'s (it was `a`'s for both terms: the first reward model stood for all).
/// The plan holds both models.
#[test]
fn grpo_weighs_several_reward_models() {
    let out = scratch("grpo-two-reward-models");
    let recipe = out.join("r.roux");
    let rl = |name: &str, reward: &str| format!("  stage {name} = grpo(policy = lm, prompts = instr) {{ reward = {reward}, steps = 1, batch = 8, group = 4, max_new = 4, eval_every = 1, eval_examples = 2 }}\n");
    std::fs::write(
        &recipe,
        format!(
            "experiment \"rms\" {{\n  seed = 6\n  data instr = synthetic.instructions {{ tasks = [reverse], examples = 100, max_len = 4 }}\n  data prefs = synthetic.preferences {{ tasks = [reverse], pairs = 100, max_len = 4 }}\n  model lm = transformer {{ vocab = 256, context = 32, d_model = 32, layers = 1, heads = 2, dropout = 0 }}\n  model small = transformer {{ vocab = 256, context = 32, d_model = 16, layers = 1, heads = 2, dropout = 0 }}\n  stage a = reward_model(lm, prefs) {{ steps = 5, batch = 8 }}\n  stage b = reward_model(small, prefs) {{ steps = 9, batch = 8 }}\n{}{}{}{}}}\n",
            rl("only_a", "reward_model(a.model)"),
            rl("only_b", "reward_model(b.model)"),
            rl("both", "reward_model(a.model) + reward_model(b.model)"),
            rl("b_of_two", "0 * reward_model(a.model) + reward_model(b.model)"),
        ),
    )
    .unwrap();
    run_ok(&recipe, &out);
    let reward = |s: &str| metrics(&out.join("rms").join(s))[0]["reward"].as_f64().unwrap();
    let (a, b) = (reward("only_a"), reward("only_b"));
    assert!(a != b, "the two reward models score alike: {a}");
    assert!((reward("both") - (a + b)).abs() < 1e-6, "both: {} vs {a} + {b}", reward("both"));
    assert!((reward("b_of_two") - b).abs() < 1e-6, "0·a + b: {} vs {b}", reward("b_of_two"));
    // The plan's frozen bytes: the reference and each reward model's trunk, 4 bytes a parameter.
    let plan = roux::plan::plan(roux::frontend::compile(&recipe).unwrap().recipe.as_ref().unwrap());
    let memory = |s: &str| plan.stages.iter().find(|p| p.name == s).unwrap().memory_bytes;
    let params = |m: &str| plan.models.iter().find(|p| p.name == m).unwrap().params_total;
    assert_eq!(memory("both") - memory("only_a"), 4 * params("small"), "{:?}", plan.stages);
}

/// PPO's and GRPO's rollouts draw as the stage says (TRL's generation options for them). Any
/// filter narrow enough is greedy — `top_k = 1`, a `top_p` below every most likely token's
/// probability, `min_p = 1` — so every completion of a group is the same and every group is flat,
/// where sampling at the temperature alone gives groups that differ.
#[test]
fn rl_rollouts_draw_through_the_stages_filters() {
    let out = scratch("rl-filters");
    let recipe = out.join("r.roux");
    std::fs::write(&recipe, std::fs::read_to_string(fixture("tiny-grpo.roux")).unwrap().replace("../../data/", "../../../data/")).unwrap();
    let steps = |filter: &str| {
        let set = ["rl.steps=2", "rl.eval_every=2", "rl.group=8", "rl.batch=16", "rl.reward=length", filter];
        let args: Vec<&str> = set.iter().filter(|s| !s.is_empty()).flat_map(|s| ["--set", *s]).collect();
        let o = roux(&[&["run", recipe.to_str().unwrap(), "--out", out.to_str().unwrap()], &args[..]].concat());
        let log = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(0), "{log}");
        (metrics(&out.join("tiny-grpo/rl")), log)
    };
    let flat = |m: &[serde_json::Value]| m.iter().map(|s| s["flat_groups"].as_f64().unwrap()).collect::<Vec<_>>();
    let (sampled, _) = steps("");
    assert!(flat(&sampled)[0] < 1.0, "sampling alone gave only flat groups: {:?}", flat(&sampled));
    for (filter, said) in [("rl.top_k=1", "top-k 1"), ("rl.top_p=0.0001", "top-p 0.0001"), ("rl.min_p=1", "min-p 1")] {
        let (m, log) = steps(filter);
        assert_eq!(flat(&m), [1.0, 1.0], "{filter}");
        assert!(log.contains(&format!("rl: rollouts drawn at temperature 1, {said}")), "{log}");
    }
    // Out of range, as `roux sample` refuses it.
    let o = roux(&["check", recipe.to_str().unwrap(), "--set", "rl.top_p=0"]);
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(text.contains("`top_p` = 0 is out of range") && text.contains("top_p must lie in (0, 1]"), "{text}");
}

/// The RL losses read the distribution the rollouts were drawn from: the logits divided by the
/// temperature, as TRL's PPO and GRPO trainers compute log-probabilities, ratios, KL and entropy.
/// A fresh model's logits z are small, so the entropy of softmax(z/T) falls short of ln V by
/// about Var(z)/(2T²): at temperature 0.5 four times what it does at 1, at 0.25 sixteen times
/// (observed 4.1 and 18.3; read at 1 regardless, the shortfalls would be alike).
#[test]
fn rl_losses_read_log_probabilities_at_the_sampling_temperature() {
    let out = scratch("rl-temperature");
    let recipe = out.join("t.roux");
    let ppo = |name: &str, t: &str| format!("  stage {name} = ppo(policy = lm, reward = rm.model, prompts = instr) {{ steps = 1, batch = 16, minibatches = 1, epochs = 1, max_new = 8, eval_every = 1, eval_examples = 2, temperature = {t} }}\n");
    let grpo = |name: &str, t: &str| format!("  stage {name} = grpo(policy = lm, prompts = instr) {{ steps = 1, batch = 16, reward = length, max_new = 8, eval_every = 1, eval_examples = 2, temperature = {t} }}\n");
    std::fs::write(
        &recipe,
        format!(
            "experiment \"temp\" {{\n  seed = 5\n  data instr = synthetic.instructions {{ tasks = [uppercase], examples = 100, max_len = 3 }}\n  data prefs = synthetic.preferences {{ tasks = [uppercase], pairs = 60, max_len = 3 }}\n  model lm = transformer {{ vocab = 256, context = 24, d_model = 32, layers = 1, heads = 2, dropout = 0 }}\n  stage rm = reward_model(lm, prefs) {{ steps = 1, batch = 8 }}\n{}{}{}{}{}}}\n",
            ppo("t1", "1"),
            ppo("t2", "0.5"),
            ppo("t4", "0.25"),
            grpo("g1", "1"),
            grpo("g4", "0.25"),
        ),
    )
    .unwrap();
    run_ok(&recipe, &out);
    // The first minibatch's entropy, before any update (GRPO logs it too, as TRL's does).
    let shortfall = |s: &str| 256f64.ln() - metrics(&out.join("temp").join(s))[0]["entropy"].as_f64().unwrap();
    let (t1, t2, t4) = (shortfall("t1"), shortfall("t2"), shortfall("t4"));
    assert!(t1 > 0.0 && (3.0..5.0).contains(&(t2 / t1)) && (12.0..24.0).contains(&(t4 / t1)), "shortfalls of ln V: {t1} at 1, {t2} at 0.5, {t4} at 0.25");
    let (g1, g4) = (shortfall("g1"), shortfall("g4"));
    assert!(g1 > 0.0 && (12.0..24.0).contains(&(g4 / g1)), "GRPO's shortfalls of ln V: {g1} at 1, {g4} at 0.25");
}

/// PPO's reward options, as TRL's PPOConfig names them, on one-token responses (max_new = 1),
/// whose value targets are their scores: the value head starts at zero, so the first value loss is
/// ½·mean(s²) over the batch.
/// - `missing_eos_penalty` comes off the score of each response that did not stop: on the first
///   step (the same samples) the logged reward is lower by penalty × the share truncated.
/// - `whiten_rewards` divides the per-token rewards by their deviation (Bessel's), keeping their
///   mean m: ½·mean(s′²) = ½·((n − 1)/n + m²), n = 8.
/// - `kl_estimator = k3`, e^(log r) − 1 − log r, is never negative (k1 = 1 and k3 = e⁻¹ at
///   log π = −1, log π_ref = −2, by hand).
#[test]
fn ppo_reward_options_by_hand() {
    use roux::recipe::KlEstimator;
    assert_eq!(KlEstimator::K1.at(-1.0, -2.0), 1.0);
    assert!((KlEstimator::K3.at(-1.0, -2.0) - (-1f64).exp()).abs() < 1e-15);
    assert!((KlEstimator::K3.at(-2.0, -1.0) - (1f64.exp() - 2.0)).abs() < 1e-15 && KlEstimator::K1.at(-2.0, -1.0) == -1.0);
    let out = scratch("ppo-options");
    let recipe = out.join("o.roux");
    let ppo = |name: &str, extra: &str| format!("  stage {name} = ppo(policy = lm, reward = rm.model, prompts = instr) {{ steps = 3, batch = 8, minibatches = 1, epochs = 1, max_new = 1, log_every = 1, eval_every = 3, eval_examples = 2, optimizer = adamw {{ lr = 3e-3 }}{extra} }}\n");
    std::fs::write(
        &recipe,
        format!(
            "experiment \"opts\" {{\n  seed = 5\n  data instr = synthetic.instructions {{ tasks = [uppercase], examples = 100, max_len = 3 }}\n  data prefs = synthetic.preferences {{ tasks = [uppercase], pairs = 60, max_len = 3 }}\n  model lm = transformer {{ vocab = 256, context = 24, d_model = 32, layers = 1, heads = 2, dropout = 0 }}\n  stage rm = reward_model(lm, prefs) {{ steps = 20, batch = 8, optimizer = adamw {{ lr = 3e-3 }} }}\n{}{}{}{}}}\n",
            ppo("base", ""),
            ppo("pen", ", missing_eos_penalty = 0.5"),
            ppo("wh", ", whiten_rewards = true"),
            ppo("k3", ", kl_estimator = k3"),
        ),
    )
    .unwrap();
    run_ok(&recipe, &out);
    let m = |s: &str| metrics(&out.join("opts").join(s));
    let (base, pen, wh, k3) = (m("base"), m("pen"), m("wh"), m("k3"));
    let first = |m: &[serde_json::Value], k: &str| m[0][k].as_f64().unwrap();
    let truncated = first(&base, "truncated");
    assert!(truncated > 0.0 && first(&pen, "truncated") == truncated, "{base:?}\n{pen:?}");
    let lower = first(&base, "reward") - first(&pen, "reward");
    assert!((lower - 0.5 * truncated).abs() < 1e-6, "the penalty took {lower} off the mean reward, {truncated} of the responses truncated");
    let mean = first(&wh, "reward");
    let want = 0.5 * (7.0 / 8.0 + mean * mean);
    assert!((first(&wh, "value_loss") - want).abs() < 1e-5, "whitened: value loss {} (want {want})", first(&wh, "value_loss"));
    assert!((first(&base, "value_loss") - want).abs() > 1e-3, "unwhitened rewards gave the whitened value loss");
    let kl: Vec<f64> = k3.iter().map(|s| s["kl"].as_f64().unwrap()).collect();
    assert!(kl.iter().all(|&k| k >= 0.0) && kl[2] > 0.0, "k3's KL per step: {kl:?}");
}

/// A prompt longer than the context leaves beside `max_new` is cut on the left, as TRL's
/// `max_prompt_length` cuts prompts, rather than ending the run (a prompt of 107 bytes in a context
/// of 48 made PPO's forward pass panic): check warns (W0408) with the count of such prompts in a
/// file, the run says it again, and PPO, GRPO and their held-out scoring run on the cut prompts.
/// An empty prompt (`template = "{prompt}"` and an empty field, which made generation panic)
/// starts after the end marker, as GPT-2 writes unconditioned text after <|endoftext|>.
#[test]
fn rl_prompts_longer_than_the_context_are_cut_on_the_left() {
    let dir = scratch("rl-long-prompts");
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let rows: Vec<String> = (0..40).map(|i| serde_json::json!({"prompt": format!("x{i}"), "response": "y"}).to_string())
        .chain((0..10).map(|i| serde_json::json!({"prompt": format!("{}{i}", "z".repeat(100)), "response": "w"}).to_string()))
        .chain((0..5).map(|_| serde_json::json!({"prompt": "", "response": "v"}).to_string()))
        .collect();
    std::fs::write(dir.join("data/i.jsonl"), rows.join("\n") + "\n").unwrap();
    let recipe = dir.join("long.roux");
    std::fs::write(
        &recipe,
        "experiment \"long\" {\n  seed = 1\n  data instr = instructions(\"data/i.jsonl\") { held_out = 0.2, template = \"{prompt}\" }\n  data prefs = synthetic.preferences { pairs = 40 }\n  model lm = transformer { vocab = 256, context = 48, d_model = 32, layers = 1, heads = 2 }\n  stage rm = reward_model(lm, prefs) { steps = 2, batch = 8 }\n  stage rl = grpo(policy = lm, prompts = instr) { steps = 3, batch = 32, max_new = 8, eval_every = 3, eval_examples = 10 }\n  stage p = ppo(policy = lm, reward = rm.model, prompts = instr) { steps = 3, batch = 32, max_new = 8, eval_every = 3, eval_examples = 10 }\n}\n",
    )
    .unwrap();
    let c = roux(&["check", recipe.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&c.stderr);
    assert!(c.status.success() && text.contains("warning[W0408]: 10 of the 55 prompts of `instr` are longer than the 40 tokens that model `lm`'s context of 48 leaves beside `max_new` = 8: each keeps its last 40"), "{text}");
    let log = run_ok(&recipe, &dir);
    for stage in ["rl", "p"] {
        assert!(log.contains(&format!("warning: {stage}: 10 of the 55 prompts of `instr` are longer than the 40 tokens that the context of 48 leaves beside `max_new` = 8: each keeps its last 40 (cut on the left, as TRL's max_prompt_length cuts)")), "{log}");
        assert_eq!(metrics(&dir.join("long").join(stage)).len(), 3, "{stage}");
    }
}

/// Without an entropy bonus PPO only logs the entropy, so it is computed without a graph a few rows
/// at a time: its temporaries (three times the logits) no longer wait for the backward pass. With
/// a vocabulary of 16384 a step of 32 rollouts peaks lower by more than one copy of the logits
/// (observed 824 → 700 MiB; at 32768, 1277 → 905 MiB; with `entropy = 0.01` the graph is needed
/// and kept).
#[test]
fn ppo_without_an_entropy_bonus_keeps_no_entropy_graph() {
    let out = scratch("ppo-entropy-memory");
    let recipe = out.join("m.roux");
    std::fs::write(
        &recipe,
        "experiment \"entmem\" {\n  seed = 5\n  data instr = synthetic.instructions { tasks = [uppercase], examples = 100, max_len = 3 }\n  data prefs = synthetic.preferences { tasks = [uppercase], pairs = 60, max_len = 3 }\n  model lm = transformer { vocab = 16384, context = 48, d_model = 32, layers = 1, heads = 2, dropout = 0 }\n  stage rm = reward_model(lm, prefs) { steps = 1, batch = 8 }\n  stage logged = ppo(policy = lm, reward = rm.model, prompts = instr) { steps = 2, batch = 32, minibatches = 1, epochs = 1, max_new = 16, eval_every = 2, eval_examples = 2 }\n  stage bonus = ppo(policy = lm, reward = rm.model, prompts = instr) { steps = 2, batch = 32, minibatches = 1, epochs = 1, max_new = 16, eval_every = 2, eval_examples = 2, entropy = 0.01 }\n}\n",
    )
    .unwrap();
    let peak = |s: &str| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_roux")).args(["run", recipe.to_str().unwrap(), "--out", out.to_str().unwrap(), "--stage", s, "-q"]).env("ROUX_MALLOC", "exact").output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("entmem").join(s).join("report.json")).unwrap()).unwrap();
        (report["peak_host_memory_bytes"].as_u64().unwrap(), metrics(&out.join("entmem").join(s))[0]["entropy"].as_f64().unwrap())
    };
    let rm = roux(&["run", recipe.to_str().unwrap(), "--out", out.to_str().unwrap(), "--stage", "rm", "-q"]);
    assert_eq!(rm.status.code(), Some(0), "{}", String::from_utf8_lossy(&rm.stderr));
    // Each stage in its own process: the peak is its own.
    let ((logged, h_logged), (bonus, h_bonus)) = (peak("logged"), peak("bonus"));
    // Logits of one minibatch: 32 rows × at least 16 response positions × 16384 × 4 bytes.
    let logits = 32 * 16 * 16384 * 4;
    assert!(logged + logits < bonus, "peak {logged} bytes with the entropy logged, {bonus} with the bonus");
    // The first step's entropy, before any update, is the same either way.
    assert!((h_logged - h_bonus).abs() < 1e-4, "{h_logged} vs {h_bonus}");
}

/// Activation checkpointing runs each block again in the backward pass, with the generators
/// replayed: every stage kind trains the same numbers to the bit, with dropout on.
#[test]
fn activation_checkpointing_changes_no_stage_s_numbers() {
    let out = scratch("checkpointing");
    let text = std::fs::read_to_string(fixture("tiny-lifecycle.roux")).unwrap().replace("../../data/", "../../../data/").replace("dropout = 0\n", "dropout = 0.1\n");
    let grpo = "  stage gr = grpo(policy = merge(sft.adapter), prompts = instr) {\n    group = 4\n    batch = 8\n    steps = 2\n    max_new = 6\n    optimizer = adamw { lr = 1e-5 }\n    eval_every = 2\n    eval_examples = 4\n  }\n}\n";
    let recipe = out.join("tiny-lifecycle.roux");
    std::fs::write(&recipe, format!("{}{grpo}", text.trim_end().strip_suffix('}').unwrap())).unwrap();
    let stages = ["pretrain", "sft", "rm", "rl", "po", "gr"];
    let on: Vec<String> = stages.iter().flat_map(|s| ["--set".to_string(), format!("{s}.activation_checkpointing=true")]).collect();
    for (dir, extra) in [("plain", vec![]), ("checkpointed", on.iter().map(String::as_str).collect::<Vec<_>>())] {
        let o = roux(&[&["run", recipe.to_str().unwrap(), "--out", out.join(dir).to_str().unwrap()], &extra[..]].concat());
        let log = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{dir}: {log}");
        let said = stages.iter().filter(|s| log.contains(&format!("{s}: activation checkpointing: only each block's input is kept, and the block runs again in the backward pass"))).count();
        assert_eq!(said, if extra.is_empty() { 0 } else { stages.len() }, "{dir}: {log}");
    }
    let stage = |dir: &str, s: &str| out.join(dir).join("tiny-lifecycle").join(s);
    for s in stages {
        let files: Vec<_> = std::fs::read_dir(stage("plain", s)).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().to_string()).filter(|f| f.ends_with(".safetensors")).collect();
        assert!(!files.is_empty(), "{s} wrote no weights");
        for f in files {
            assert!(std::fs::read(stage("plain", s).join(&f)).unwrap() == std::fs::read(stage("checkpointed", s).join(&f)).unwrap(), "{s}/{f} differs with activation checkpointing");
        }
        let losses = |dir: &str| metrics(&stage(dir, s)).iter().map(|m| m["loss"].as_f64()).collect::<Vec<_>>();
        assert_eq!(losses("plain"), losses("checkpointed"), "{s}: the losses differ with activation checkpointing");
    }
    // Not part of a stage's definition (as how the processes divide the work is not): a run
    // without it is up to date with it, and one that ran out of memory resumes with it.
    let o = roux(&[&["run", recipe.to_str().unwrap(), "--out", out.join("plain").to_str().unwrap()], &on.iter().map(String::as_str).collect::<Vec<_>>()[..]].concat());
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && stages.iter().all(|s| log.contains(&format!("{s}: up to date"))), "{log}");
}

/// TR-DPO's moving reference (`sync_ref_model`), on DPO and GRPO. With α = 1 the reference
/// becomes the policy: the DPO step after each sync starts from h = 0, its loss ln 2 exactly as
/// on the first step, and GRPO's KL to a reference synced every step is 0 on every step (it grows
/// without). With α = 0.6 a run killed after a checkpoint resumes from the moved reference the
/// checkpoint kept: the same weights as a run never stopped.
#[test]
fn a_synced_reference_moves_with_the_policy_and_resumes_exactly() {
    let out = scratch("ref-sync");
    let recipe = out.join("s.roux");
    let text = |dpo: &str, grpo: &str| {
        format!(
            r#"experiment "sync" {{
          seed = 7
          data prefs = synthetic.preferences {{ tasks = [uppercase], pairs = 120, max_len = 3 }}
          data instr = synthetic.instructions {{ tasks = [uppercase], examples = 120, max_len = 3 }}
          model lm = transformer {{ vocab = 256, context = 24, d_model = 32, layers = 1, heads = 2, dropout = 0 }}
          stage po = dpo(lm, prefs) {{ beta = 0.5, steps = 12, batch = 8, log_every = 1, eval_every = 4, eval_examples = 2, max_new = 2, optimizer = adamw {{ lr = 3e-3 }}{dpo} }}
          stage gr = grpo(policy = lm, prompts = instr) {{ group = 4, batch = 16, steps = 4, max_new = 4, reward = matches("[a-z]"), eval_every = 4, eval_examples = 2, optimizer = adamw {{ lr = 3e-3 }}{grpo} }}
        }}"#
        )
    };
    std::fs::write(&recipe, text(", sync_ref_model = true, ref_model_mixup_alpha = 1, ref_model_sync_steps = 2", ", sync_ref_model = true, ref_model_mixup_alpha = 1, ref_model_sync_steps = 1")).unwrap();
    let log = run_ok(&recipe, &out.join("one"));
    assert!(log.contains("po: DPO (sigmoid loss, β = 0.5, reference ← 1·policy + 0·reference every 2 steps (TR-DPO))"), "{log}");
    let losses: Vec<f64> = metrics(&out.join("one/sync/po")).iter().map(|m| m["loss"].as_f64().unwrap()).collect();
    let ln2 = std::f64::consts::LN_2;
    for (step, l) in losses.iter().enumerate() {
        // Steps 1, 3, 5, … (indices 0, 2, 4, …) start from a reference equal to the policy.
        assert_eq!((l - ln2).abs() < 1e-6, step % 2 == 0, "step {}: loss {l} (ln 2 = {ln2}): {losses:?}", step + 1);
    }
    let kl = |dir: &str| metrics(&out.join(dir).join("sync/gr")).iter().map(|m| m["kl"].as_f64().unwrap()).collect::<Vec<f64>>();
    assert!(kl("one").iter().all(|&k| k == 0.0), "{:?}", kl("one"));
    std::fs::write(&recipe, text("", "")).unwrap();
    run_ok(&recipe, &out.join("free"));
    // (Without the sync the policy leaves its reference as soon as a group's rewards differ.)
    assert!(kl("free").last().is_some_and(|&k| k > 0.0), "{:?}", kl("free"));
    // α = 0.6 every 3 steps, killed after the checkpoint at step 4 (the reference moved at step 3).
    std::fs::write(&recipe, text(", sync_ref_model = true, ref_model_sync_steps = 3", "")).unwrap();
    let whole = out.join("whole");
    run_ok(&recipe, &whole);
    let killed = out.join("killed");
    let dir = killed.join("sync/po");
    assert!(common::kill_after_checkpoint(&["run", recipe.to_str().unwrap(), "--out", killed.to_str().unwrap(), "--stage", "po"], &dir, 4), "the DPO stage finished before it could be killed, three times");
    let log = run_ok(&recipe, &killed);
    assert!(log.contains("po: resuming from step"), "{log}");
    let read = |d: &std::path::Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(read(&whole.join("sync/po")) == read(&dir), "weights differ after a resume");
    assert_eq!(metrics(&whole.join("sync/po")), metrics(&dir), "metrics differ after a resume");
}

/// TRL's `generalized_jsd_loss` from the two distributions by hand: a student at (1/2, 1/2) and a
/// teacher at (3/4, 1/4). β = 0 is KL(T ‖ S) = 3/4·ln(3/2) + 1/4·ln(1/2), β = 1 is KL(S ‖ T) =
/// 1/2·ln(2/3) + 1/2·ln 2, and between them β·KL(T ‖ M) + (1 − β)·KL(S ‖ M), M = β·T + (1 − β)·S.
#[test]
fn generalized_jsd_by_hand() {
    use roux::run::kit::losses::generalized_jsd;
    let (s, te) = ([0.5, 0.5], [0.75, 0.25]);
    let kl = |p: &[f64; 2], q: &[f64; 2]| p[0] * (p[0] / q[0]).ln() + p[1] * (p[1] / q[1]).ln();
    let student = t(&[0.0, 0.0]).view([1, 1, 2]).set_requires_grad(true);
    let teacher = t(&[3f64.ln(), 0.0]).view([1, 1, 2]);
    for beta in [0.0, 0.25, 0.5, 0.9, 1.0] {
        let m = [beta * te[0] + (1.0 - beta) * s[0], beta * te[1] + (1.0 - beta) * s[1]];
        let want = if beta == 0.0 {
            kl(&te, &s)
        } else if beta == 1.0 {
            kl(&s, &te)
        } else {
            beta * kl(&te, &m) + (1.0 - beta) * kl(&s, &m)
        };
        let got = generalized_jsd(&student, &teacher, beta);
        assert_eq!(got.size(), [1, 1]);
        close(&got.sum(Kind::Float), want);
    }
    close(&generalized_jsd(&student, &teacher, 0.0).sum(Kind::Float), 0.75 * 1.5f64.ln() + 0.25 * 0.5f64.ln());
    close(&generalized_jsd(&student, &teacher, 0.5).sum(Kind::Float), 0.033822);
    // Only the student learns: forward KL's gradient in its logits is p_S − p_T = (−1/4, 1/4).
    let loss = generalized_jsd(&student, &teacher, 0.0).sum(Kind::Float);
    loss.backward();
    let g = student.grad().view([-1]);
    close(&g.get(0), -0.25);
    close(&g.get(1), 0.25);
    // Equal distributions diverge by nothing, whatever β.
    for beta in [0.0, 0.5, 1.0] {
        close(&generalized_jsd(&teacher, &teacher, beta).sum(Kind::Float), 0.0);
    }
}

/// A student half the teacher's size, from fresh weights, learns the fine-tuned teacher's task
/// from its distributions alone, on its own responses half the time; `plan` counts the teacher's
/// forward passes and the student's sampling; a run killed at a checkpoint resumes to the same
/// weights, coins included.
#[test]
fn distillation_teaches_a_smaller_student_and_resumes_exactly() {
    let recipe = fixture("tiny-distill.roux");
    let (whole, killed) = (scratch("distill-whole"), scratch("distill-killed"));
    let log = run_ok(&recipe, &whole);
    assert!(
        log.contains("kd: distilling `big` into `small` (34688 trainable of 34688 parameters) on `instr` for 400 steps × 32 examples: the generalized JSD at β = 0.5 over the student's own responses (sampled at temperature 0.9) on a share 0.5 of the steps, the data's on the rest"),
        "{log}"
    );
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(whole.join("tiny-distill/kd/report.json")).unwrap()).unwrap();
    // The JSD at β = 1/2 is at most ln 2, where the distributions share nothing.
    let (before, after) = (report["val_loss"]["before"].as_f64().unwrap(), report["val_loss"]["after"].as_f64().unwrap());
    assert!(before > 0.5 && before < 2f64.ln() && after < 0.05, "held-out divergence {before} → {after}");
    let exact = |k: &str| report[k]["exact"].as_f64().unwrap();
    assert!(exact("teacher_score") > 0.9 && exact("before") < 0.05 && exact("after") > 0.9, "{report}");
    // The coin: about half the steps sampled, and the log's per-window shares add up to them.
    let on = report["on_policy_steps"].as_u64().unwrap();
    // The student is a model downstream stages read: `compare` scores it beside its teacher.
    let table: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(whole.join("tiny-distill/table/report.json")).unwrap()).unwrap();
    let row = |label: &str| table["rows"].as_array().unwrap().iter().find(|r| r["policy"] == label).unwrap_or_else(|| panic!("{table}"))["score"]["exact"].as_f64().unwrap();
    assert_eq!(row("student"), exact("after"), "{table}");
    assert!((140..=260).contains(&on), "{on} of 400 steps on-policy");
    let rows = metrics(&whole.join("tiny-distill/kd"));
    // (Each row's share is of the steps since the row before.)
    let logged: f64 = rows.iter().scan(0, |last, r| {
        let step = r["step"].as_u64().unwrap();
        let steps = step - std::mem::replace(last, step);
        Some(steps as f64 * r["on_policy"].as_f64().unwrap())
    }).sum();
    assert_eq!(logged.round() as u64, on, "{rows:?}");

    // FLOPs a token: the student forward and backward (6N), the teacher forward (2N), and half
    // the steps' sampling (2N) by the student.
    let plan = roux(&["plan", recipe.to_str().unwrap(), "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let n = |m: &str| plan["models"].as_array().unwrap().iter().find(|x| x["name"] == m).unwrap()["params_total"].as_f64().unwrap();
    let kd = plan["stages"].as_array().unwrap().iter().find(|s| s["name"] == "kd").unwrap();
    let want = 400.0 * 32.0 * 32.0 * (6.0 * n("small") + 2.0 * n("big") + 0.5 * 2.0 * n("small"));
    assert_eq!((n("small"), n("big")), (34688.0, 70464.0));
    assert!((kd["flops"].as_f64().unwrap() / want - 1.0).abs() < 1e-9, "{kd} vs {want}");

    // torchtune's mix: half the divergence, half the data's negative log-likelihood, both logged.
    let read = |d: &std::path::Path| std::fs::read(d.join("tiny-distill/kd/model.safetensors")).unwrap();
    let plain = read(&whole);
    let o = roux(&["run", recipe.to_str().unwrap(), "--out", whole.to_str().unwrap(), "--set", "kd.kd_ratio=0.5", "--set", "kd.lmbda=0"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let mixed = metrics(&whole.join("tiny-distill/kd"));
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap();
    for r in &mixed {
        assert!((f(r, "loss") - 0.5 * f(r, "divergence") - 0.5 * f(r, "nll")).abs() < 1e-6 * f(r, "loss").max(1.0), "{r}");
    }
    assert!(f(&mixed[mixed.len() - 1], "nll") < 0.2 * f(&mixed[0], "nll"), "{:?}", mixed.iter().map(|r| f(r, "nll")).collect::<Vec<_>>());

    // Killed after its step-100 checkpoint, it resumes to the same weights.
    let dir = killed.join("tiny-distill/kd");
    let interrupted = common::kill_after_checkpoint(&["run", recipe.to_str().unwrap(), "--out", killed.to_str().unwrap()], &dir, 100);
    assert!(interrupted, "the distill stage finished before it could be killed, three times");
    let log = run_ok(&recipe, &killed);
    assert!(log.contains("kd: resuming from step 100"), "{log}");
    assert!(plain == read(&killed), "weights differ after a resume");
    let resumed: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!((resumed["on_policy_steps"].as_u64(), resumed["val_loss"].clone()), (Some(on), report["val_loss"].clone()));
}

/// Online DPO's pairs: of each prompt's two responses the higher-rewarded is chosen and the first
/// wins a tie, as TRL's `first_half >= second_half`; the loss is DPO's on log-probabilities summed
/// over each response.
#[test]
fn online_dpo_ranks_its_pairs_by_hand() {
    use roux::run::stages::online_dpo::rank;
    // Three prompts: the second response better, a tie, the first better.
    assert_eq!(rank(&[0.0, 0.5, 1.0, 1.0, 0.5, 0.0], 3), vec![(3, 0), (1, 4), (2, 5)]);
    assert_eq!(rank(&[], 0), vec![]);
}

/// Online DPO on the GRPO fixture's policy and reward: the pairs it writes and ranks raise the
/// reward and shorten the responses; `plan` counts generation, the policy's training, the
/// reference's forward pass; a run killed at a checkpoint resumes to the same weights.
#[test]
fn online_dpo_follows_its_reward_and_resumes_exactly() {
    let recipe = fixture("tiny-online.roux");
    let (whole, killed) = (scratch("online-whole"), scratch("online-killed"));
    let log = run_ok(&recipe, &whole);
    assert!(log.contains("rl: online DPO on prompts of `instr`: 24 steps × 8 prompts × 2 responses (temperature 0.9), the higher-rewarded one chosen, DPO's sigmoid loss at β = 0.1"), "{log}");
    let m = metrics(&whole.join("tiny-online/rl"));
    let mean = |rows: &[serde_json::Value], k: &str| rows.iter().map(|v| v[k].as_f64().unwrap()).sum::<f64>() / rows.len() as f64;
    let (first, last) = (&m[..6], &m[m.len() - 6..]);
    assert!(mean(last, "objective/scores") > mean(first, "objective/scores") + 0.05, "reward {} → {}", mean(first, "objective/scores"), mean(last, "objective/scores"));
    assert!(mean(last, "response_length") < mean(first, "response_length"), "length {} → {}", mean(first, "response_length"), mean(last, "response_length"));
    for row in &m {
        // The chosen response is never the worse one, and the implicit rewards' margin is theirs.
        assert!(row["objective/scores_margin"].as_f64().unwrap() >= 0.0, "{row}");
        let (c, r, margin) = (row["rewards/chosen"].as_f64().unwrap(), row["rewards/rejected"].as_f64().unwrap(), row["rewards/margins"].as_f64().unwrap());
        assert!((c - r - margin).abs() < 1e-9 && (0.0..=1.0).contains(&row["rewards/accuracies"].as_f64().unwrap()), "{row}");
    }
    // Each evaluation step's pairs are kept: every prompt's two responses, the chosen one the
    // better rewarded, and the step's mean score the logged one.
    for step in [8, 16, 24] {
        let text = std::fs::read_to_string(whole.join(format!("tiny-online/rl/rollouts/step-{step}.jsonl"))).unwrap();
        let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), 16);
        for pair in 0..8 {
            let both: Vec<&serde_json::Value> = rows.iter().filter(|r| r["pair"] == pair).collect();
            let [a, b] = both[..] else { panic!("pair {pair}: {both:?}") };
            let (chosen, rejected) = if a["role"] == "chosen" { (a, b) } else { (b, a) };
            assert!(rejected["role"] == "rejected" && chosen["prompt"] == rejected["prompt"], "{a} {b}");
            assert!(chosen["reward"].as_f64() >= rejected["reward"].as_f64(), "{a} {b}");
        }
        let at = m.iter().find(|r| r["step"] == step).unwrap();
        assert!((mean(&rows, "reward") - at["objective/scores"].as_f64().unwrap()).abs() < 1e-9, "step {step}");
    }
    // Its loss need not fall (each step's pairs are new): the health check does not judge it.
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(whole.join("tiny-online/rl/report.json")).unwrap()).unwrap();
    assert!(report["warnings"].as_array().unwrap().iter().all(|w| w["signal"] != "loss_not_falling"), "{report}");
    assert!(whole.join("tiny-online/rl/reward.svg").exists() && whole.join("tiny-online/rl/kl.svg").exists());
    // At the first step the policy is its reference: every implicit reward is 0, the loss ln 2.
    assert!((m[0]["loss"].as_f64().unwrap() - 2f64.ln()).abs() < 1e-4 && m[0]["rewards/chosen"].as_f64().unwrap().abs() < 1e-4, "{}", m[0]);

    // FLOPs a token of the 2 × 8 responses: generation (2N), training (6N), the reference (2N).
    let plan = roux(&["plan", recipe.to_str().unwrap(), "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let n = plan["models"][0]["params_total"].as_f64().unwrap();
    let rl = plan["stages"].as_array().unwrap().iter().find(|s| s["name"] == "rl").unwrap();
    assert!((rl["flops"].as_f64().unwrap() / (24.0 * 16.0 * 48.0 * 10.0 * n) - 1.0).abs() < 1e-9, "{rl}");

    let dir = killed.join("tiny-online/rl");
    let interrupted = common::kill_after_checkpoint(&["run", recipe.to_str().unwrap(), "--out", killed.to_str().unwrap()], &dir, 8);
    assert!(interrupted, "the online DPO stage finished before it could be killed, three times");
    let log = run_ok(&recipe, &killed);
    assert!(log.contains("rl: resuming from step 8"), "{log}");
    let read = |d: &std::path::Path| std::fs::read(d.join("tiny-online/rl/model.safetensors")).unwrap();
    assert!(read(&whole) == read(&killed), "weights differ after a resume");
}

/// Best-of-n keeps the highest reward of each prompt's n responses, the first on a tie.
#[test]
fn best_of_n_picks_by_hand() {
    use roux::run::stages::best_of_n::best_of;
    assert_eq!(best_of(&[0.1, 0.5, 0.5, 0.2, 1.0, 1.0, 0.0, -1.0], 4), vec![1, 4]);
    assert_eq!(best_of(&[-2.0, -1.0, 3.0], 1), vec![0, 1, 2]);
}

/// Best-of-n fine-tuning on the GRPO fixture's policy and reward: training on each prompt's best
/// response raises the reward of all of them; with a threshold only the best that reach it train;
/// `plan` counts the n generations; a run killed at a checkpoint resumes to the same weights.
#[test]
fn best_of_n_follows_its_reward_and_resumes_exactly() {
    let recipe = fixture("tiny-best-of-n.roux");
    let (whole, killed) = (scratch("best-of-n-whole"), scratch("best-of-n-killed"));
    let log = run_ok(&recipe, &whole);
    assert!(log.contains("rl: best-of-4 fine-tuning on prompts of `instr`: 24 steps × 8 prompts × 4 responses (temperature 1), each prompt's best trained on"), "{log}");
    let read = |d: &std::path::Path| std::fs::read(d.join("tiny-best-of-n/rl/model.safetensors")).unwrap();
    let plain = read(&whole);
    let m = metrics(&whole.join("tiny-best-of-n/rl"));
    let mean = |rows: &[serde_json::Value], k: &str| rows.iter().map(|v| v[k].as_f64().unwrap()).sum::<f64>() / rows.len() as f64;
    let (first, last) = (&m[..6], &m[m.len() - 6..]);
    assert!(mean(last, "reward") > mean(first, "reward") + 0.05, "reward {} → {}", mean(first, "reward"), mean(last, "reward"));
    assert!(mean(last, "response_length") < mean(first, "response_length"));
    assert!(m.iter().all(|r| r["best_reward"].as_f64() >= r["reward"].as_f64() && r["kept"].as_f64() == Some(1.0)), "{m:?}");
    // Each evaluation step's responses are kept, and the one a prompt trained on is its best.
    for step in [8, 16, 24] {
        let text = std::fs::read_to_string(whole.join(format!("tiny-best-of-n/rl/rollouts/step-{step}.jsonl"))).unwrap();
        let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), 32);
        for prompt in rows.chunks(4) {
            let kept: Vec<_> = prompt.iter().filter(|r| r["kept"] == true).collect();
            let best = prompt.iter().map(|r| r["reward"].as_f64().unwrap()).fold(f64::MIN, f64::max);
            assert!(kept.len() == 1 && kept[0]["reward"].as_f64() == Some(best) && prompt.iter().all(|r| r["prompt_index"] == prompt[0]["prompt_index"]), "{prompt:?}");
        }
        let at = m.iter().find(|r| r["step"] == step).unwrap();
        assert!((mean(&rows, "reward") - at["reward"].as_f64().unwrap()).abs() < 1e-9, "step {step}");
    }
    let plan = roux(&["plan", recipe.to_str().unwrap(), "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let n = plan["models"][0]["params_total"].as_f64().unwrap();
    let rl = plan["stages"].as_array().unwrap().iter().find(|s| s["name"] == "rl").unwrap();
    // The best response trains (6N a token), all four are generated (2N each).
    assert!((rl["flops"].as_f64().unwrap() / (24.0 * 8.0 * 48.0 * (6.0 + 4.0 * 2.0) * n) - 1.0).abs() < 1e-9, "{rl}");

    // Sampling holds every row's keys and values (2 layers × 2 × 32 floats a position) and the
    // prompt pass's widest layer (the MLP's 2 × 128) at the context of 48, and the next token's
    // 256 logits, for 8 prompts × n rows: at n = 512 and 1024 past training's peak, so the two
    // plans differ by 512 × 8 rows of it.
    let memory = |n: &str| {
        let o = roux(&["plan", recipe.to_str().unwrap(), "--json", "--set", &format!("rl.n={n}")]);
        let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        plan["stages"].as_array().unwrap().iter().find(|s| s["name"] == "rl").unwrap()["memory_bytes"].as_u64().unwrap()
    };
    assert_eq!(memory("1024") - memory("512"), 4 * (48 * (2 * 2 * 32 + 2 * 128) + 256) * 8 * 512);
    assert_eq!(memory("4"), rl["memory_bytes"].as_u64().unwrap(), "4 responses a prompt sample within training's peak");
    // A threshold above the first steps' best rewards leaves some prompts untrained.
    let o = roux(&["run", recipe.to_str().unwrap(), "--out", whole.to_str().unwrap(), "--set", "rl.threshold=0.85"]);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(log.contains("each prompt's best trained on when its reward reaches 0.85"), "{log}");
    let kept: Vec<f64> = metrics(&whole.join("tiny-best-of-n/rl")).iter().map(|r| r["kept"].as_f64().unwrap()).collect();
    assert!(kept[0] < 1.0 && kept.iter().all(|k| (0.0..=1.0).contains(k)), "{kept:?}");

    let dir = killed.join("tiny-best-of-n/rl");
    let interrupted = common::kill_after_checkpoint(&["run", recipe.to_str().unwrap(), "--out", killed.to_str().unwrap()], &dir, 8);
    assert!(interrupted, "the best-of-n stage finished before it could be killed, three times");
    let log = run_ok(&recipe, &killed);
    assert!(log.contains("rl: resuming from step 8"), "{log}");
    assert!(plain == read(&killed), "weights differ after a resume");
}

/// Reading a stage's weights a tensor at a time (`Model::loaded`) leaves the random generator
/// where building a fresh model and copying the weights in left it, so the adapters a stage
/// draws next are the same; the weights are the file's.
#[test]
fn loading_weights_a_tensor_at_a_time_draws_what_a_fresh_model_drew() {
    use roux::run::model::Model;
    let c = roux::frontend::compile(&fixture("tiny-lifecycle.roux")).unwrap();
    let recipe = c.recipe.unwrap();
    let spec = recipe.model("lm").unwrap();
    tch::manual_seed(3);
    let source = Model::new(spec, tch::Device::Cpu).unwrap().named();
    tch::manual_seed(7);
    let mut fresh = Model::new(spec, tch::Device::Cpu).unwrap();
    fresh.load(&source).unwrap();
    let after_new = tch::Tensor::randn([8], (tch::Kind::Float, tch::Device::Cpu));
    tch::manual_seed(7);
    let loaded = Model::loaded(spec, tch::Device::Cpu, &source, None).unwrap();
    let after_loaded = tch::Tensor::randn([8], (tch::Kind::Float, tch::Device::Cpu));
    assert!(after_new.equal(&after_loaded), "the generator moved differently");
    for ((n, a), (_, b)) in fresh.named().iter().zip(loaded.named()) {
        assert!(a.equal(&b), "`{n}` differs");
    }
}

/// `compare` scores a benchmark whole unless `examples` says otherwise (lm-eval's default), and
/// `roux plan` counts one pass per choice of every question scored.
#[test]
fn a_benchmark_is_compared_whole_unless_examples_says_otherwise() {
    let dir = scratch("choices-whole");
    let line = r#"{"prompt": "2+2=", "choices": ["4", "5", "22"], "answer": 0}"#;
    std::fs::write(dir.join("q.jsonl"), vec![line; 250].join("\n")).unwrap();
    for (extra, want) in [("", 250), ("examples = 10", 10)] {
        let text = format!("experiment \"w\" {{\n  data quiz = choices(\"q.jsonl\")\n  model lm = transformer {{ vocab = 256, context = 16, d_model = 16, layers = 1, heads = 2 }}\n  stage t = compare(lm = lm) {{ data = quiz {extra} }}\n}}\n");
        std::fs::write(dir.join("r.roux"), text).unwrap();
        let c = roux::frontend::compile(&dir.join("r.roux")).unwrap();
        let recipe = c.recipe.unwrap_or_else(|| panic!("{:?}", c.diagnostics.iter().map(|d| &d.message).collect::<Vec<_>>()));
        let Some(roux::recipe::StageKind::Compare(spec)) = recipe.stage("t").map(|s| &s.kind) else { panic!("a compare stage") };
        assert_eq!(spec.examples, want);
        let o = roux(&["plan", dir.join("r.roux").to_str().unwrap(), "--json"]);
        let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(plan["stages"][0]["tokens"].as_u64(), Some(want as u64 * 3 * 16), "{extra}");
    }
}

/// `precompute_ref_log_probs` (TRL's): the reference's log-probabilities of the pairs the steps
/// draw, computed before the first step from the policy's starting weights, give the steps of a
/// held reference to rounding, with LoRA too; no reference is held (the plan and the report drop
/// a copy of the model, and the process's measured peak falls by at least half of it); a resumed
/// run computes the table again and takes the uninterrupted run's steps.
#[test]
fn precomputed_reference_log_probs_take_the_steps_of_a_held_reference() {
    let out = scratch("dpo-precompute");
    let recipe = fixture("tiny-pairs.roux");
    let on = ["--set", "po.precompute_ref_log_probs=true"];
    let lora = ["--set", "po.adapter=lora { rank = 4 }", "--set", "po.optimizer.lr=3e-2"];
    let run = |dir: &str, extra: &[&str]| -> (String, std::path::PathBuf) {
        let dest = out.join(dir);
        let args = [&["run", recipe.to_str().unwrap(), "--out", dest.to_str().unwrap(), "--stage", "po", "--set", "po.eval_every=10", "--set", "po.eval_data=[prefs]"], extra].concat();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_roux")).args(&args).env("ROUX_MALLOC", "exact").output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(0), "{err}");
        (err, out.join(dir).join("pairs/po"))
    };
    let report = |dir: &std::path::Path| serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let losses = |dir: &std::path::Path| metrics(dir).iter().filter_map(|m| m["loss"].as_f64()).collect::<Vec<_>>();
    let weights = |dir: &std::path::Path, file: &str| {
        let mut t = Tensor::read_safetensors(dir.join(file)).unwrap();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    // The pairs 30 steps of 8 draw, as the stage's sampler draws them.
    let train = {
        let set = roux::frontend::compile(&recipe).unwrap().recipe.unwrap().example_set("prefs").unwrap().clone();
        roux::posttrain::examples::preferences(&set, 7).unwrap().train.len()
    };
    let mut rng = roux::rng::Rng(7 ^ 0xD90);
    let drawn = (0..30 * 8).map(|_| rng.below(train as u64)).collect::<std::collections::BTreeSet<_>>().len();
    for (name, extra, file) in [("full", &[][..], "model.safetensors"), ("lora", &lora[..], "adapter.safetensors")] {
        let (_, held) = run(&format!("{name}-held"), extra);
        let (log, pre) = run(&format!("{name}-pre"), &[extra, &on[..]].concat());
        assert!(log.contains(&format!("the reference's log-probabilities of the {drawn} pairs the steps draw (of {train}) and of 4 held-out pairs precomputed in")), "{log}");
        let (a, b) = (losses(&held), losses(&pre));
        assert_eq!(a.len(), 30);
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-5, "{name}: losses differ by {worst:e}: {a:?} vs {b:?}");
        assert!(a[20..].iter().sum::<f64>() / 10.0 < a[0] - 0.01, "{name}: the loss did not fall: {a:?}");
        let w = weight_difference(&weights(&held, file), &weights(&pre, file));
        assert!(w < 1e-5, "{name}: weights differ by {w:e}");
        let (rh, rp) = (report(&held), report(&pre));
        assert_eq!(rp["precomputed_reference_pairs"].as_u64(), Some(drawn as u64));
        // A LoRA policy's reference is its own base: no weights of its own, held or precomputed.
        assert_eq!((rh["reference_weight_bytes"].as_u64() == Some(0), rp["reference_weight_bytes"].as_u64()), (name == "lora", Some(0)), "{name}");
        let accuracy = |r: &serde_json::Value| r["held_out_rewards"]["accuracy"].as_f64().unwrap();
        assert_eq!(accuracy(&rh), accuracy(&rp), "{name}: held-out pairwise accuracy");
        // `eval_data` (the stage's own set here: the same held-out pairs, read through their own
        // codec and, precomputed, their own table) gives the held-out rewards, held or precomputed.
        for (dir, r) in [(&held, &rh), (&pre, &rp)] {
            for m in metrics(dir).iter().filter(|m| m["eval_rewards/margins"].is_number()) {
                assert_eq!((&m["eval_rewards/margins/prefs"], &m["eval_rewards/accuracies/prefs"]), (&m["eval_rewards/margins"], &m["eval_rewards/accuracies"]), "{name}: {m}");
            }
            assert_eq!(r["eval_data"]["prefs"], r["held_out_rewards"], "{name}");
        }
        // The held-out generation has no reference to measure a KL against.
        assert!(rh["after"]["kl"].is_number() && rp["after"]["kl"].is_null(), "{name}: {} vs {}", rh["after"], rp["after"]);
    }
    // A full stage holds no copy of the model: 4 bytes a parameter fewer, planned and held.
    let params = report(&out.join("full-held/pairs/po"))["reference_weight_bytes"].as_u64().unwrap();
    assert_eq!(report(&out.join("full-pre/pairs/po"))["reference_weight_bytes"], 0);
    let planned = |extra: &[&str]| {
        let o = roux(&[&["plan", recipe.to_str().unwrap(), "--json"], extra].concat());
        let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        plan["stages"].as_array().unwrap().iter().find(|s| s["name"] == "po").unwrap()["memory_bytes"].as_u64().unwrap()
    };
    assert_eq!(planned(&[]) - planned(&on), params, "the plan's saving");
    // Measured, on a model the reference dominates (6.4M parameters).
    let big = ["--set", "lm.d_model=512", "--set", "lm.layers=2", "--set", "lm.context=32", "--set", "po.steps=2", "--set", "po.eval_examples=1"];
    let peak = |dir: &str, extra: &[&str]| report(&run(dir, &[&big[..], extra].concat()).1)["peak_host_memory_bytes"].as_u64().unwrap();
    let (with, without) = (peak("big-held", &[]), peak("big-pre", &on));
    let copy = report(&out.join("big-held/pairs/po"))["reference_weight_bytes"].as_u64().unwrap();
    assert!(without + copy / 2 < with, "peak memory: {with} bytes with a held reference of {copy}, {without} precomputed");
    // Resumed from step 20: the table is computed again from the starting weights.
    let resumed = out.join("resumed");
    assert!(std::process::Command::new("cp").arg("-r").args([out.join("full-pre"), resumed.clone()]).status().unwrap().success());
    std::fs::remove_file(resumed.join("pairs/po/report.json")).unwrap();
    let (log, dir) = run("resumed", &[&on[..], &["--resume-from", "ckpt-20"]].concat());
    assert!(log.contains("resuming from step 20 of 30"), "{log}");
    assert_eq!(weight_difference(&weights(&out.join("full-pre/pairs/po"), "model.safetensors"), &weights(&dir, "model.safetensors")), 0.0, "resumed vs uninterrupted");
}
