//! What a recipe trains on: corpora and their tokenizers, synthetic data, example sets.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Tokenizer {
    /// One token per byte; vocabulary 256.
    Bytes,
    /// Byte-level BPE trained on the training split (the `tokenizers` crate), `vocab` tokens;
    /// saved as tokenizer.json beside the model.
    Bpe { vocab: usize },
    /// The tokenizer.json of the checkpoint model `model` was imported from
    /// (`tokenizer = base.tokenizer`), its vocabulary the model's; copied beside the run's model.
    Model { model: String, vocab: usize },
}

/// How one `compare` policy reads a text corpus: with the tokens its weights learned (a
/// corpus's own `tokenizer` only for fresh weights), so models of different tokenizers are scored
/// on the same held-out text.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reading {
    pub tokenizer: Tokenizer,
    /// For BPE: the `train` stage whose run holds the tokenizer it trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_in: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DataSpec {
    pub name: String,
    /// Absolute path of the text file.
    pub path: PathBuf,
    pub tokenizer: Tokenizer,
    pub vocab: usize,
    pub context: usize,
    /// Fraction of the corpus used for training; the rest is validation.
    pub split: f64,
    /// Size of the corpus in tokens: bytes for the byte tokenizer, an upper bound (the bytes)
    /// for BPE, whose count is known only once it is trained.
    pub tokens: u64,
    /// A `.jsonl` corpus: one document per line, its text under this key (`field`, "text" by
    /// default); each document ends with the end-of-sequence token (a newline in bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `mix(a, b) { weights = […] }`: the corpora sampled, each with its weight (a training row
    /// comes from a corpus with probability weight / Σ weights); their tokenizer and context are
    /// the mix's, `path` its first's. Empty for a `text(…)` corpus.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mix: Vec<(String, f64)>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SyntheticSpec {
    pub name: String,
    pub generator: Generator,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Generator {
    /// Regression whose input space splits into `tasks` angular sectors of the first two input
    /// coordinates, each with its own random affine map: a task whose decomposition is known.
    Regions { tasks: usize, dim: usize, outputs: usize, examples: usize, noise: f64 },
}

/// A synthetic instruction task with a programmatic answer (see `posttrain::tasks`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Reverse,
    Sort,
    Add,
    Uppercase,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ExampleKind {
    /// Prompt → response, for instruction fine-tuning (and prompts for PPO).
    Instructions,
    /// Prompt, chosen, rejected: for reward models and DPO.
    Preferences,
    /// Prompt, completion and a label, desirable or not: unpaired feedback for KTO (TRL's
    /// unpaired preference format).
    Feedback,
    /// A question, its choices and the right one's index: a benchmark `compare` scores by each
    /// choice's likelihood, as lm-evaluation-harness scores multiple-choice tasks.
    Choices,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExampleSource {
    /// Generated from the seed: `count` distinct prompts (pairs for preferences); a `verbose`
    /// share of instruction responses carry a filler after the answer; a `desirable` share of
    /// feedback completions are the concise right answer (the others are not).
    Synthetic {
        tasks: Vec<Task>,
        count: usize,
        verbose: f64,
        max_len: usize,
        #[serde(default, skip_serializing_if = "is_zero")]
        desirable: f64,
    },
    /// One JSON object per line; `fields` are the keys read, in order (prompt, response),
    /// (prompt, chosen, rejected) or (prompt, completion, label), the label a JSON boolean.
    Jsonl { path: PathBuf, fields: Vec<String> },
    /// Conversations, one JSON object per line: `{"messages": [{"role", "content"}, …]}` for
    /// instructions; `chosen` and `rejected` message lists (after an optional `prompt` list)
    /// for preferences; `prompt` and `completion` lists and a boolean `label` for feedback. Rendered with the set's chat template: the recipe's `chat_template`
    /// file (`template`), else the checkpoint's.
    /// Multiple-choice questions, one JSON object per line: `fields` are the keys of the
    /// question, its list of choices and the right one's index; each choice is scored as
    /// `delimiter` + the choice after the rendered question. `questions` and `most` (choices a
    /// question at most), as check read them, size the plan.
    /// `questions`: those scored (after the `fewshot` first, which are shown before each).
    Choices {
        path: PathBuf,
        fields: Vec<String>,
        delimiter: String,
        questions: usize,
        most: usize,
        #[serde(default, skip_serializing_if = "no_examples")]
        fewshot: usize,
        #[serde(default = "fewshot_delimiter", skip_serializing_if = "is_fewshot_delimiter")]
        fewshot_delimiter: String,
        /// Text before the few-shot examples and each question (lm-eval's `description`).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        description: String,
    },
    Chat {
        path: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        template: Option<PathBuf>,
        /// `date = "YYYY-MM-DD"`: the day the template's `strftime_now` formats.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        date: Option<String>,
    },
}

/// A Hugging Face chat template (Jinja) and the special tokens it may print.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChatTemplate {
    pub source: String,
    pub bos: String,
    pub eos: String,
    /// The day `strftime_now` formats (`YYYY-MM-DD`, the data's `date`); absent, the template
    /// has no `strftime_now`, as a template that tests `strftime_now is defined` expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExampleSet {
    pub name: String,
    pub kind: ExampleKind,
    pub source: ExampleSource,
    /// How a prompt is shown to the model; contains `{prompt}`.
    pub template: String,
    /// Appended to every response; generation stops when it is produced.
    pub end: String,
    /// Share of prompts held out for evaluation (chosen by a hash of the prompt).
    pub held_out: f64,
    /// The model whose tokenizer encodes these examples (`tokenizer = base.tokenizer`, an
    /// imported model's tokenizer.json); absent, bytes. With it, an empty `end` is the model's
    /// end-of-sequence token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// For conversations: the chat template (the recipe's `chat_template`, else the checkpoint's
    /// named by `tokenizer`), with that checkpoint's special tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<ChatTemplate>,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn no_examples(n: &usize) -> bool {
    *n == 0
}

/// What separates few-shot examples from each other and from the question (lm-eval's
/// `fewshot_delimiter`).
pub fn fewshot_delimiter() -> String {
    "\n\n".to_string()
}

fn is_fewshot_delimiter(s: &String) -> bool {
    *s == fewshot_delimiter()
}
