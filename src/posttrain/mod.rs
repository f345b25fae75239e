//! Post-training data (pure; no libtorch): synthetic instruction tasks with a gold reward,
//! instruction, preference and feedback sets from JSONL, prompt templates and loss masks.
//!
//! | file          | what it does                                                        |
//! |---------------|---------------------------------------------------------------------|
//! | `tasks.rs`    | reverse / sort / add / uppercase, their answers and the gold reward |
//! | `examples.rs` | example sets and pairs, held-out split, template, loss weights      |
//! | `jsonl.rs`    | a JSONL data set's rows: the fields named, a feedback label, bad lines |
//! | `choices.rs`  | a multiple-choice set's questions, and lm-eval's context/continuation split |
//! | `gae.rs`      | generalised advantage estimation for PPO                            |
//! | `chat.rs`     | conversations rendered with a chat template (minijinja), bounded    |
//! | `messages.rs` | a conversation's messages, tools and template arguments, as written |
//! | `rows.rs`     | a conversational data set's lines: conversations, pairs, feedback   |
//! | `generation.rs` | transformers' `{% generation %}` blocks: the assistant's text     |
//! | `pyjson.rs`   | a chat template's `tojson`, as Python's `json.dumps`                |
//! | `pystr.rs`    | how a chat template prints a value: Python's `str`                  |
//! | `strftime.rs` | a chat template's `strftime_now`, on the recipe's fixed `date`      |

pub mod chat;
pub mod choices;
pub mod examples;
pub mod generation;
pub mod messages;
pub mod gae;
pub mod jsonl;
pub mod pyjson;
pub mod pystr;
pub mod rows;
pub mod strftime;
pub mod tasks;
