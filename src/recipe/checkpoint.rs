//! Where an imported model's weights come from: a Hugging Face checkpoint directory, and the
//! architectures (`Family`) roux reads and writes.

use serde::{Deserialize, Serialize};

/// The Hugging Face architectures roux reads and writes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Gpt2,
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Mixtral,
    Olmoe,
    Qwen2Moe,
    Qwen3Moe,
    Phi3,
    Olmo2,
    Gemma2,
    Gemma3,
}

impl Family {
    /// The architecture as Hugging Face spells it, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Family::Gpt2 => "GPT-2",
            Family::Llama => "Llama",
            Family::Mistral => "Mistral",
            Family::Qwen2 => "Qwen2",
            Family::Qwen3 => "Qwen3",
            Family::Mixtral => "Mixtral",
            Family::Olmoe => "OLMoE",
            Family::Qwen2Moe => "Qwen2-MoE",
            Family::Qwen3Moe => "Qwen3-MoE",
            Family::Phi3 => "Phi-3",
            Family::Olmo2 => "OLMo 2",
            Family::Gemma2 => "Gemma 2",
            Family::Gemma3 => "Gemma 3",
        }
    }
}

/// A Hugging Face checkpoint directory a model's weights start from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Checkpoint {
    /// The directory, as resolved from the recipe's folder.
    pub dir: std::path::PathBuf,
    pub family: Family,
    /// The weight files in the directory: `model.safetensors`, or the shards its index names.
    pub files: Vec<String>,
    /// The weights' element type as stored (`float32`, `bfloat16`, `float16`).
    pub dtype: String,
    /// The weight files' total size in bytes (with `files`, what a run's identity records).
    pub bytes: u64,
    /// A checkpoint roux exported from a byte-level model (no tokenizer.json): its ids are bytes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub byte_level: bool,
    /// The folder holds tokenizer.json (what `tokenizer = MODEL.tokenizer` encodes with).
    #[serde(default, skip_serializing_if = "is_false")]
    pub tokenizer: bool,
    /// The text model of a multimodal checkpoint (Gemma 3 4B and up): its tensors named under
    /// `language_model.` (`hf::names::text_model`), the vision tower's left unread.
    #[serde(default, skip_serializing_if = "is_false")]
    pub multimodal: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}
