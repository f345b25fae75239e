//! Commands on finished runs (room `run/tools`): each returns data and the CLI prints it.
//!
//! | file        | command                                                            |
//! |-------------|--------------------------------------------------------------------|
//! | `sample.rs` | `roux sample`: generation from a trained run                       |
//! | `export.rs` | `roux export --to hf`: GPT-2 / Llama layout Hugging Face files     |
//! | `peft.rs`   | `roux export --to peft`: a LoRA stage as a PEFT adapter            |
//! | `merge.rs`  | `roux merge`: a LoRA stage's adapter folded into its base          |
//! | `bench.rs`  | `roux bench`: step-time comparisons measured in one run            |

pub mod bench;
pub mod export;
pub mod import_bench;
pub mod merge;
pub mod peft;
pub mod sample;
