//! Every diagnostic code with its one-line meaning: the one list. docs/reference.md's table is
//! checked against it (tests/docs.rs), so the two never drift.

macro_rules! codes {
    ($($id:ident = $text:literal: $meaning:literal,)*) => {
        /// A diagnostic's code: `E…` errors, `W…` warnings, `N…` notes.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code {
            $($id,)*
        }

        impl Code {
            /// Every code, in the order of the reference's table.
            pub const ALL: &'static [Code] = &[$(Code::$id,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$id => $text,)*
                }
            }

            /// What the code means, in one line (the reference's table).
            pub fn meaning(self) -> &'static str {
                match self {
                    $(Code::$id => $meaning,)*
                }
            }
        }
    };
}

codes! {
    E0001 = "E0001": "syntax error (in the recipe or YAML form)",
    E0002 = "E0002": "nesting deeper than 64 levels",
    E0003 = "E0003": "a YAML document that is not the recipe form (wrong shape, a bad key, an empty value)",
    E0009 = "E0009": "a recipe the checker rejected without saying why (a fault in roux; please report it)",
    E0100 = "E0100": "unknown key (with a did-you-mean)",
    E0101 = "E0101": "missing required key",
    E0102 = "E0102": "a key set twice, or a name declared twice",
    E0103 = "E0103": "a declaration or sweep inside a nested block",
    E0104 = "E0104": "wrong constructor arguments (`text` takes one path)",
    E0105 = "E0105": "unknown or extra argument",
    E0106 = "E0106": "missing argument",
    E0107 = "E0107": "both `steps` and `tokens`",
    E0110 = "E0110": "unknown name",
    E0111 = "E0111": "unknown attribute",
    E0112 = "E0112": "a key defined in terms of itself",
    E0120 = "E0120": "wrong type of value",
    E0121 = "E0121": "a number too large",
    E0122 = "E0122": "division by zero",
    E0123 = "E0123": "not a whole number",
    E0130 = "E0130": "unknown option (activation, norm, router, stage kind, task, …)",
    E0140 = "E0140": "a malformed `--set` override",
    E0201 = "E0201": "below the minimum",
    E0202 = "E0202": "outside the allowed range",
    E0210 = "E0210": "data file not found",
    E0211 = "E0211": "context not shorter than the data",
    E0212 = "E0212": "a path outside the recipe's project",
    E0213 = "E0213": "an experiment name that is not one plain path component",
    E0214 = "E0214": "a JSONL data file with bad lines, no examples, or that cannot be read",
    E0215 = "E0215": "a Hugging Face checkpoint that cannot be read (no config, a bad index or safetensors header)",
    E0216 = "E0216": "a checkpoint architecture or setting roux cannot compute exactly",
    E0217 = "E0217": "checkpoint tensors that do not match its config (missing, extra, wrong shape or type)",
    E0220 = "E0220": "heads do not divide d_model",
    E0221 = "E0221": "rope with an odd head size",
    E0222 = "E0222": "data context beyond the model's",
    E0223 = "E0223": "model vocab below the tokenizer's",
    E0224 = "E0224": "warmup (and decay) longer than the stage",
    E0225 = "E0225": "`min_lr` above `lr`",
    E0226 = "E0226": "kv_heads does not divide heads",
    E0227 = "E0227": "a GRPO batch its group size does not divide, or a group of 1 with `loss = rloo`",
    E0228 = "E0228": "the longest prompt and `max_new` beyond the model's context",
    E0229 = "E0229": "a batch that `accumulate` (times the number of processes) does not divide",
    E0230 = "E0230": "an option of another router",
    E0231 = "E0231": "MoE placement past the last block",
    E0232 = "E0232": "k (or expert-choice capacity) beyond the number of experts",
    E0240 = "E0240": "a budget over- or under-determined",
    E0241 = "E0241": "not a fitted-law file",
    E0242 = "E0242": "an IsoFLOP point too small to train",
    E0243 = "E0243": "a sweep with more than 10,000 points, or more than 8 MiB of recipes",
    E0244 = "E0244": "an IsoFLOP budget whose models are beyond what sizing builds",
    E0245 = "E0245": "`expert_parallel` on a dense model, or a degree that does not divide the experts",
    E0246 = "E0246": "a DPO option its loss does not use (`label_smoothing` with a loss but sigmoid, robust, simpo, exo_pair, aot and aot_unpaired; `gamma` without simpo; `discopop_tau` without discopop; `rpo_alpha` with orpo; `desirable_weight`/`undesirable_weight` with a loss but kto and apo_zero; `use_weighting` on unpaired feedback), or a GRPO option `loss = rloo` does not use (`top_entropy_quantile`, `importance_sampling`, `scale_rewards = group`)",
    E0250 = "E0250": "a prompt template without exactly one `{prompt}`",
    E0251 = "E0251": "an empty `end` marker",
    E0252 = "E0252": "`chat_template` or `date` on data without conversations, or a chat template file that is missing or does not parse",
    E0253 = "E0253": "a `date` that is not a calendar day \"YYYY-MM-DD\"",
    E0254 = "E0254": "a `matches` reward whose regular expression does not compile within its bounds",
    E0255 = "E0255": "a checkpoint's tokenizer gives ids past its model's vocabulary",
    E0257 = "E0257": "`optimizer = muon` beside `shard_optimizer`, `expert_parallel` or a LoRA adapter",
    E0258 = "E0258": "`sync_ref_model` on a stage with no reference of its own (LoRA, a reference-free loss, `beta = 0`), or its keys without it",
    E0259 = "E0259": "a `distill` teacher that cannot teach its student: fresh weights, another vocabulary, or a shorter context",
    E0260 = "E0260": "`kd_ratio` below 1 on a `distill` stage that trains on the student's own samples (`lmbda` > 0)",
    E0261 = "E0261": "`double_quant` on a LoRA adapter whose base is not quantized (`quantize_base = nf4`)",
    E0262 = "E0262": "`loraplus_lr_ratio` on a stage that trains no LoRA adapter",
    E0263 = "E0263": "`precompute_ref_log_probs` on a DPO stage with no reference to precompute (a reference-free loss) or one that moves (`sync_ref_model`)",
    E0264 = "E0264": "`sample_prompt`, `sample_tokens` or `sample_temperature` on a `train` stage without `sample_every`",
    E0265 = "E0265": "a LoRA adapter on stacked experts with DoRA or dropout, which add to each input rather than to the weights",
    E0300 = "E0300": "a stage cycle",
    E0301 = "E0301": "a wrong kind of argument (data where a model goes, a stage where its output goes)",
    E0310 = "E0310": "a wrong kind of model artifact (a reward model as a policy, an unmerged adapter, `merge` of a non-adapter)",
    E0311 = "E0311": "a stage output that does not exist (`sft.model` of a LoRA stage)",
    E0312 = "E0312": "a LoRA target that matches no linear layer or stack of experts",
    E0313 = "E0313": "instruction data where preference pairs go, or the reverse; unpaired feedback where a loss compares pairs",
    E0314 = "E0314": "a program reward on data without answers",
    E0315 = "E0315": "a model fed the tokens of another tokenizer than the one it was trained with",
    W0401 = "W0401": "a stage strays from its budget's optimum (a warning: the recipe still runs)",
    N0402 = "N0402": "the size chosen for a `params = N` model (a note)",
    W0403 = "W0403": "examples longer than the model's context, which training cuts (a warning)",
    N0404 = "N0404": "what a JSONL data set holds: examples and their lengths (a note)",
    W0405 = "W0405": "a stage renders conversations with another chat template than its model was trained in (a warning)",
    W0406 = "W0406": "conversations whose chat template rewrites earlier turns train on their last assistant turn only (a warning)",
    W0407 = "W0407": "KTO's desirable and undesirable examples, weighed, outside the balance it recommends (a warning)",
    W0408 = "W0408": "PPO's or GRPO's prompts longer than the context leaves beside `max_new`, which the run cuts on the left (a warning)",
    W0409 = "W0409": "a `train` stage that reads a corpus's training tokens more than 4 times over (a warning)",
    N0410 = "N0410": "what each corpus of a mix gives a `train` stage: its share of the rows, the tokens and the epochs (a note)",
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
