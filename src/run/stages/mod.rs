//! One file per stage kind (room `run/stages`), each `run(ctx: &StageCtx, spec: &XSpec)` with
//! its loop written out, torchtune style: what loops share is in `run/kit`, the network in
//! `run/model`. A stage never imports another stage (a sweep trains through `ctx.train`).
//!
//! | file          | stage                                                            |
//! |---------------|------------------------------------------------------------------|
//! | `train.rs`    | `train`: pretraining on a corpus                                  |
//! | `isoflop.rs`  | `isoflop`: sweep, fit, predict, check the prediction              |
//! | `mixture.rs`  | `mixture`: Jacobs et al. 1991 on a synthetic task                 |
//! | `finetune.rs` | `finetune`: SFT, full or LoRA                                     |
//! | `reward.rs`   | `reward_model`: Bradley–Terry on preference pairs                 |
//! | `ppo.rs`      | `ppo`: RLHF with a KL penalty, GAE, clipping                      |
//! | `dpo.rs`      | `dpo`: DPO and its variants on pairs; `dpo/feedback.rs`, KTO on unpaired feedback |
//! | `online_dpo.rs` | `online_dpo`: DPO on pairs the policy writes, ranked by a reward |
//! | `best_of_n.rs` | `best_of_n`: fine-tuning on the best of n sampled responses (RAFT) |
//! | `grpo.rs`     | `grpo`: GRPO, Dr. GRPO, DAPO and RLOO on sampled groups           |
//! | `distill.rs`  | `distill`: a student learns a teacher's distributions (GKD)       |
//! | `compare.rs`  | `compare`: the table of policies                                  |

pub mod best_of_n;
pub mod compare;
pub mod distill;
pub mod dpo;
pub mod finetune;
pub mod grpo;
pub mod isoflop;
pub mod mixture;
pub mod online_dpo;
pub mod ppo;
pub mod reward;
pub mod train;
