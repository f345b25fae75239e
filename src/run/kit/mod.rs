//! What stage loops share (room `run/kit`): small helpers the loops call, not a framework they
//! live inside. Imports `run/model`, never `run/stages` or `run/tools`.
//!
//! | file           | what it does                                                         |
//! |----------------|----------------------------------------------------------------------|
//! | `context.rs`   | `StageCtx` (what the runner hands a stage) and `RunOptions`          |
//! | `lifecycle.rs` | the one run-directory lifecycle: reuse, resume, `--fresh`, checkpoints |
//! | `finish.rs`    | a run's end: outputs (streamed or whole), report.json, plots        |
//! | `changes.rs`   | what changed in a stage's definition since its run                   |
//! | `outputs.rs`   | a finished run's outputs verified before it is reused                |
//! | `lock.rs`      | one lock per run directory                                           |
//! | `hash.rs`      | what each stage kind's output depends on, as a content hash          |
//! | `inputs.rs`    | the files a stage reads, as digests in its hash                      |
//! | `files.rs`     | atomic writes, capped reads, the stable hash function                |
//! | `checkpoint.rs`| named tensors and AdamW moments, the run state, resume              |
//! | `adamw/`       | AdamW on flat buffers of plain tensors; across processes (`zero.rs`, `divided.rs`, `moments.rs`) |
//! | `artifacts.rs` | models named by artifact references, reward models, example splits  |
//! | `data.rs`      | a corpus split into training and validation tokens; batches          |
//! | `hf.rs`        | a Hugging Face checkpoint's weights, memory-mapped, into a model     |
//! | `codec.rs`     | examples' text ↔ ids: bytes or the model's tokenizer, its end token  |
//! | `tokenize.rs`  | byte-level BPE: train on the corpus, save tokenizer.json             |
//! | `seqs.rs`      | padded variable-length batches, log-probabilities, generation        |
//! | `packing.rs`   | examples packed into rows (best-fit decreasing) for `packing = true` |
//! | `score.rs`     | a policy's scores on held-out prompts                                |
//! | `completions.rs`| what a policy said at each held-out evaluation: `completions/step-N.jsonl` |
//! | `choices.rs`   | a policy's accuracy on multiple-choice questions (lm-eval's)          |
//! | `perplexity.rs`| a policy's perplexity on a corpus's held-out split, window by window |
//! | `in_loop.rs`   | what `train` scores beside its validation loss: `eval_choices`, `eval_data` |
//! | `sampling.rs`  | what `train` samples as it learns (`sample_every`): samples/step-N.txt |
//! | `rewards.rs`   | a stage's `reward = …`: program terms and reward models' scores      |
//! | `losses.rs`    | Bradley–Terry, DPO, clipped PPO and value losses, entropy            |
//! | `progress.rs`  | the progress of a loop and metrics.jsonl                             |
//! | `health.rs`    | training-health signals read from the logged metrics                |
//! | `patience.rs`  | `patience = N` on post-training stages: stop without progress        |
//! | `tensorboard.rs`| TensorBoard event files beside metrics.jsonl                        |
//! | `event_texts.rs`| samples, completions, rollouts and scores as TensorBoard texts      |
//! | `device.rs`    | the device a stage runs on, the memory guard                         |
//! | `alloc.rs`     | the process's allocator (`ROUX_MALLOC`)                              |
//! | `deferred.rs`  | per-step loss and non-finite steps kept on the device between logs  |
//! | `profile.rs`   | `--profile A..B`: a Chrome trace of some training steps             |
//! | `native.rs`    | the C++ shim (`native.cpp`): fused AdamW kernel, the Kineto profiler |
//! | `nf4.cpp`      | NF4 weights and the linear layer over them (declared in `run/model/nf4.rs`) |
//! | `dist.rs`      | the run's processes (torchrun) and c10d's collectives (`dist.cpp`; NCCL: `nccl.cpp`) |
//! | `expert_groups.rs` | the groups of processes an MoE model's experts are divided over     |

pub mod adamw;
pub mod alloc;
pub mod artifacts;
pub mod choices;
pub mod changes;
pub mod checkpoint;
pub mod codec;
pub mod completions;
pub mod context;
pub mod data;
pub mod decode;
pub mod deferred;
pub mod device;
pub mod dist;
pub mod event_texts;
pub mod expert_groups;
pub mod files;
pub mod finish;
pub mod hash;
pub mod inputs;
pub mod health;
pub mod in_loop;
pub mod hf;
pub mod lifecycle;
pub mod lock;
pub mod outputs;
pub mod patience;
pub mod perplexity;
pub mod native;
pub mod packing;
pub mod profile;
pub mod losses;
pub mod progress;
pub mod reference;
pub mod rewards;
pub mod sampling;
pub mod score;
pub mod seqs;
pub mod tensorboard;
pub mod tokenize;

pub use context::{RunOptions, StageCtx};
