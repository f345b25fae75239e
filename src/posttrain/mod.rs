//! Post-training data (pure; no libtorch): synthetic instruction tasks with a gold reward,
//! instruction and preference sets from JSONL, prompt templates and loss masks.
//!
//! | file          | what it does                                                        |
//! |---------------|---------------------------------------------------------------------|
//! | `tasks.rs`    | reverse / sort / add / uppercase, their answers and the gold reward |
//! | `examples.rs` | example sets and pairs, held-out split, template, loss weights      |
//! | `gae.rs`      | generalised advantage estimation for PPO                            |

pub mod chat;
pub mod examples;
pub mod gae;
pub mod pyjson;
pub mod tasks;
