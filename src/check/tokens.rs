//! The same tokenizer for a model and its data: a model whose weights were trained on the BPE
//! tokens of a corpus reads token ids of that tokenizer, and post-training examples are bytes.
//! Feeding one to the other trains on ids that mean something else, silently; the check refuses.

use super::Checker;
use crate::diag::{Code, Diagnostic};
use std::collections::{HashMap, HashSet};

use crate::recipe::{CompareSpec, ExampleKind, ModelRef, Reading, Recipe, StageKind, StageSpec, Tokenizer};

/// Where a model's weights learned their tokens.
#[derive(Clone, Copy)]
enum Origin<'r> {
    /// Stage `stage` trained them on data `data` with `tokenizer`.
    Trained { stage: &'r str, data: &'r str, tokenizer: &'r Tokenizer },
    /// They come from a Hugging Face checkpoint, with its own tokenizer.
    Checkpoint { model: &'r str },
}

/// Which ids: two tokenizers give the same ids when they are the same kind, or the tokenizer of
/// the same checkpoint folder. (Two BPE tokenizers trained on different corpora differ; a run
/// copies the one it continues, see `train`.)
#[derive(PartialEq)]
enum Ids {
    Bytes,
    Bpe,
    Checkpoint(Option<std::path::PathBuf>),
}

fn checkpoint_ids(r: &Recipe, model: &str) -> Ids {
    Ids::Checkpoint(r.model(model).and_then(|s| s.checkpoint.as_ref()).map(|c| c.dir.clone()))
}

fn ids_of(r: &Recipe, t: &Tokenizer) -> Ids {
    match t {
        Tokenizer::Bytes => Ids::Bytes,
        Tokenizer::Bpe { .. } => Ids::Bpe,
        Tokenizer::Model { model, .. } => checkpoint_ids(r, model),
    }
}

impl Origin<'_> {
    fn ids(&self, r: &Recipe) -> Ids {
        match self {
            Origin::Trained { tokenizer, .. } => ids_of(r, tokenizer),
            Origin::Checkpoint { model } => checkpoint_ids(r, model),
        }
    }

    /// "BPE tokens (vocab 512) of `corpus` in stage `pretrain`".
    fn learned(&self) -> String {
        match self {
            Origin::Trained { stage, data, tokenizer } => format!("{} of `{data}` in stage `{stage}`", describe(tokenizer)),
            Origin::Checkpoint { model } => format!("the tokens of its own tokenizer (model `{model}` is imported from a checkpoint)"),
        }
    }
}

/// The tokens the weights of each stage learned, following post-training and continued
/// pretraining back to the `train` stage or checkpoint that started them (None: fresh weights).
/// Each stage is found by name and walked once, iteratively: a chain of 20k stages is linear.
struct Origins<'r> {
    r: &'r Recipe,
    stages: HashMap<&'r str, &'r StageSpec>,
    known: HashMap<&'r str, Option<Origin<'r>>>,
}

/// One step back from a stage: where its weights came from, or the stage they came from.
enum Step<'r> {
    Found(Option<Origin<'r>>),
    Up(&'r str),
}

impl<'r> Origins<'r> {
    fn new(r: &'r Recipe) -> Self {
        Origins { r, stages: r.stages.iter().map(|s| (s.name.as_str(), s)).collect(), known: HashMap::new() }
    }

    fn of(&mut self, name: &'r str) -> Option<Origin<'r>> {
        // The stages walked, each answered at the end.
        let mut seen = HashSet::new();
        let mut at = name;
        let found = loop {
            if let Some(o) = self.known.get(at) {
                break *o;
            }
            // A circle (reported elsewhere) has no origin.
            if !seen.insert(at) {
                break None;
            }
            let Some(stage) = self.stages.get(at) else { break None };
            match self.step(stage) {
                Step::Found(o) => break o,
                Step::Up(up) => at = up,
            }
        };
        for s in seen {
            self.known.insert(s, found);
        }
        found
    }

    fn step(&self, stage: &'r StageSpec) -> Step<'r> {
        match &stage.kind {
            StageKind::Train(t) => match t.init_from.as_deref() {
                Some(up) => Step::Up(up),
                None => Step::Found(checkpoint_origin(self.r, &t.model).or_else(|| {
                    let data = self.r.data(&t.data)?;
                    Some(Origin::Trained { stage: &stage.name, data: &data.name, tokenizer: &data.tokenizer })
                })),
            },
            kind => match inputs(kind).first() {
                Some(m) => match m.stage() {
                    Some(up) => Step::Up(up),
                    None => Step::Found(checkpoint_origin(self.r, &m.arch)),
                },
                None => Step::Found(None),
            },
        }
    }

    fn of_ref(&mut self, m: &'r ModelRef) -> Option<Origin<'r>> {
        match m.stage() {
            Some(s) => self.of(s),
            None => checkpoint_origin(self.r, &m.arch),
        }
    }
}

/// An imported model's weights, unless the checkpoint is one roux exported from a byte-level model.
fn checkpoint_origin<'r>(r: &'r Recipe, arch: &str) -> Option<Origin<'r>> {
    let m = r.model(arch)?;
    m.checkpoint.as_ref().filter(|c| !c.byte_level)?;
    Some(Origin::Checkpoint { model: &m.name })
}

/// The models a post-training stage reads its examples with.
pub(super) fn inputs(kind: &StageKind) -> Vec<&ModelRef> {
    match kind {
        StageKind::Finetune(f) => vec![&f.model],
        StageKind::RewardModel(m) => vec![&m.model],
        StageKind::Ppo(p) => vec![&p.policy],
        StageKind::Dpo(d) => vec![&d.policy],
        StageKind::Grpo(g) => vec![&g.policy],
        StageKind::Distill(d) => vec![&d.student, &d.teacher],
        StageKind::OnlineDpo(o) => vec![&o.policy],
        StageKind::BestOfN(b) => vec![&b.policy],
        StageKind::Compare(c) => c.policies.iter().map(|(_, m)| m).chain([&c.reference]).collect(),
        StageKind::Train(_) | StageKind::Isoflop(_) | StageKind::Mixture(_) => vec![],
    }
}

pub(super) fn describe(t: &Tokenizer) -> String {
    match t {
        Tokenizer::Bytes => "bytes".into(),
        Tokenizer::Bpe { vocab } => format!("BPE tokens (vocab {vocab})"),
        Tokenizer::Model { model, .. } => format!("the tokens of `{model}`'s tokenizer"),
    }
}

impl Checker<'_> {
    /// E0315 for every stage that would feed a model tokens of another tokenizer than its own.
    /// Resolves how each `compare` over a corpus reads it (`CompareSpec::reads`).
    pub(super) fn check_tokenizers(&mut self, recipe: &mut Recipe) {
        let readings = self.check_stage_tokens(recipe);
        for (stage, reads) in readings {
            if let Some(StageKind::Compare(c)) = recipe.stages.iter_mut().find(|s| s.name == stage).map(|s| &mut s.kind) {
                c.reads = reads;
            }
        }
        let r = &*recipe;
        self.check_set_tokenizers(r);
        self.check_tokenizer_ids(r);
        self.check_template_lineage(r);
    }

    /// Every stage's tokens against its model's; the readings of each `compare` over a corpus.
    fn check_stage_tokens(&mut self, r: &Recipe) -> Vec<(String, Vec<Reading>)> {
        let mut readings = vec![];
        let mut origins = Origins::new(r);
        for s in &r.stages {
            let span = self.decl(&s.name).map_or(self.ast.name_span, |d| d.value.span);
            // Pretraining: the data's tokenizer against the weights' (continued, or imported).
            if let StageKind::Train(t) = &s.kind {
                let Some(data) = r.data(&t.data) else { continue };
                let o = match t.init_from.as_deref() {
                    Some(up) => origins.of(up),
                    None => checkpoint_origin(r, &t.model),
                };
                if let Some(o) = o.filter(|o| o.ids(r) != ids_of(r, &data.tokenizer)) {
                    let hint = match &o {
                        Origin::Checkpoint { model } => read_with(model, &data.name),
                        Origin::Trained { .. } => "a model and its data use one tokenizer: give both data sets the same `tokenizer`".into(),
                    };
                    self.error(Diagnostic::error(Code::E0315, span, format!("stage `{}` trains on `{}` as {}, but the weights it continues learned {}", s.name, data.name, describe(&data.tokenizer), o.learned()))
                        .with_hint(hint));
                }
                continue;
            }
            // A perplexity or multiple-choice table: each policy reads the text with the tokens it
            // learned (as lm-eval scores each model with its own tokenizer).
            if let StageKind::Compare(c) = &s.kind {
                let own = match (r.data(&c.data), r.example_set(&c.data)) {
                    (Some(d), _) => Some(d.tokenizer.clone()),
                    (None, Some(set)) if set.kind == ExampleKind::Choices => Some(r.set_tokenizer(set)),
                    _ => None,
                };
                if let Some(own) = own {
                    readings.push((s.name.clone(), self.compared_readings(&mut origins, &s.name, c, &own, span)));
                    continue;
                }
            }
            // Post-training examples are encoded as bytes or with an imported model's tokenizer:
            // the model must have learned the same tokens.
            let Some(set) = stage_set(&s.kind).and_then(|n| r.example_set(n)) else { continue };
            for o in inputs(&s.kind).into_iter().filter_map(|m| origins.of_ref(m)) {
                let reads = match &set.tokenizer {
                    Some(m) => format!("with the tokenizer of `{m}`"),
                    None => "as bytes".to_string(),
                };
                let same = match &set.tokenizer {
                    None => o.ids(r) == Ids::Bytes,
                    Some(t) => o.ids(r) == checkpoint_ids(r, t) && checkpoint_ids(r, t) != Ids::Checkpoint(None),
                };
                if !same {
                    let hint = match &o {
                        Origin::Checkpoint { model } => format!("encode the data with the model's tokenizer: add `tokenizer = {model}.tokenizer` to data `{}`", set.name),
                        Origin::Trained { .. } if set.tokenizer.is_some() => format!("a model reads the tokens it learned: drop `tokenizer` from data `{}`", set.name),
                        Origin::Trained { .. } => "post-training examples are bytes or an imported model's tokenizer: pretrain the model on data with `tokenizer = bytes`".into(),
                    };
                    self.error(Diagnostic::error(Code::E0315, span, format!("stage `{}` reads `{}` {reads}, but its model learned {}: the ids would mean other tokens", s.name, set.name, o.learned()))
                        .with_hint(hint));
                    break;
                }
            }
        }
        readings
    }

    /// How each policy of a `compare` over a corpus or multiple-choice set reads it: with the
    /// tokens its weights learned, or the data's `own` for fresh weights. E0315 for fresh weights
    /// and BPE (no run holds that tokenizer) or a checkpoint with no tokenizer.json; E0223 for a
    /// policy whose vocabulary does not cover the ids it reads.
    fn compared_readings<'r>(&mut self, origins: &mut Origins<'r>, stage: &str, c: &'r CompareSpec, own: &Tokenizer, span: crate::diag::Span) -> Vec<Reading> {
        let r = origins.r;
        let mut reads = vec![];
        for (label, p) in &c.policies {
            let reading = match origins.of_ref(p) {
                Some(Origin::Trained { stage, tokenizer: Tokenizer::Bpe { vocab }, .. }) => Reading { tokenizer: Tokenizer::Bpe { vocab: *vocab }, trained_in: Some(stage.to_string()) },
                Some(Origin::Trained { tokenizer, .. }) => Reading { tokenizer: tokenizer.clone(), trained_in: None },
                Some(Origin::Checkpoint { model }) => Reading { tokenizer: Tokenizer::Model { model: model.to_string(), vocab: r.model(model).map_or(0, |m| m.vocab) }, trained_in: None },
                None => Reading { tokenizer: own.clone(), trained_in: None },
            };
            let fresh = matches!(reading.tokenizer, Tokenizer::Bpe { .. }) && reading.trained_in.is_none();
            if fresh {
                self.error(Diagnostic::error(Code::E0315, span, format!("stage `{}` reads `{}` as {} for policy `{label}`, whose weights are fresh: that tokenizer exists only in the run of a stage that trains on it", stage, c.data, describe(own)))
                    .with_hint(format!("compare fresh weights on a corpus read as bytes (leave `tokenizer` out of data `{}`), or compare the model a `train` stage made", c.data)));
            }
            if let Tokenizer::Model { model, .. } = &reading.tokenizer {
                if !r.model(model).and_then(|m| m.checkpoint.as_ref()).is_some_and(|ck| ck.tokenizer) {
                    self.error(Diagnostic::error(Code::E0315, span, format!("policy `{label}` learned the tokens of `{model}`'s tokenizer, but its checkpoint folder has no tokenizer.json to read `{}` with", c.data))
                        .with_hint("put the checkpoint's tokenizer.json beside its config.json"));
                }
            }
            let needs = match &reading.tokenizer {
                Tokenizer::Bytes => 256,
                Tokenizer::Bpe { vocab } | Tokenizer::Model { vocab, .. } => *vocab,
            };
            if let Some(vocab) = r.model(&p.arch).map(|m| m.vocab).filter(|&v| v < needs) {
                self.error(Diagnostic::error(Code::E0223, span, format!("policy `{label}` (model `{}`) has vocab {vocab}, smaller than the {needs} ids of {} it reads `{}` with", p.arch, describe(&reading.tokenizer), c.data))
                    .with_hint("a policy reads every id of its tokenizer: compare models whose vocabulary covers it"));
            }
            reads.push(reading);
        }
        reads
    }

    /// An imported model whose tokenizer encodes data gives no id past the model's vocabulary: one
    /// would index past its embedding (E0255), once per model, at the first data set reading it.
    fn check_tokenizer_ids(&mut self, r: &Recipe) {
        let corpora = r.data.iter().filter_map(|d| match &d.tokenizer {
            Tokenizer::Model { model, .. } => Some((model.as_str(), d.name.as_str())),
            _ => None,
        });
        let compared = r.stages.iter().filter_map(|s| match &s.kind {
            StageKind::Compare(c) => Some(c.reads.iter().filter_map(move |read| match &read.tokenizer {
                Tokenizer::Model { model, .. } => Some((model.as_str(), c.data.as_str())),
                _ => None,
            })),
            _ => None,
        });
        let users = corpora.chain(r.examples.iter().filter_map(|s| s.tokenizer.as_deref().map(|m| (m, s.name.as_str())))).chain(compared.flatten());
        let mut seen = HashSet::new();
        for (model, set) in users {
            let Some(spec) = r.model(model).filter(|_| seen.insert(model)) else { continue };
            let Some(ck) = spec.checkpoint.as_ref().filter(|c| c.tokenizer && !c.byte_level) else { continue };
            let Some(top) = super::hf::tokenizer_top_id(self.loader, &ck.dir).filter(|&t| t >= spec.vocab as u64) else { continue };
            let span = self.decl(set).map_or(self.ast.name_span, |d| d.value.span);
            self.error(
                Diagnostic::error(Code::E0255, span, format!("data `{set}` is encoded by the tokenizer of `{model}`, whose ids reach {top}, but the model embeds only {} tokens (config.json's vocab_size)", spec.vocab))
                    .with_hint("the tokenizer.json and the weights must come from the same model: an id past the vocabulary has no embedding"),
            );
        }
    }

    /// A data set's `tokenizer` names a model imported with its tokenizer.json.
    fn check_set_tokenizers(&mut self, r: &Recipe) {
        for set in &r.examples {
            let Some(m) = &set.tokenizer else { continue };
            let has = r.model(m).and_then(|s| s.checkpoint.as_ref()).is_some_and(|c| c.tokenizer);
            if !has {
                let span = self.decl(&set.name).map_or(self.ast.name_span, |d| d.value.span);
                self.error(Diagnostic::error(Code::E0315, span, format!("data `{}` takes the tokenizer of `{m}`, which has none: only a model imported with `hf(\"…\")` from a folder with tokenizer.json does", set.name))
                    .with_hint("leave `tokenizer` out to encode the examples as bytes"));
            }
        }
    }
}

/// The hint for a corpus read otherwise than with imported model `model`'s tokenizer.
fn read_with(model: &str, data: &str) -> String {
    format!("read the corpus with the model's tokenizer: add `tokenizer = {model}.tokenizer` to data `{data}`")
}

/// The example set a post-training stage reads.
pub(super) fn stage_set(kind: &StageKind) -> Option<&str> {
    match kind {
        StageKind::Finetune(f) => Some(&f.data),
        StageKind::RewardModel(m) => Some(&m.data),
        StageKind::Ppo(p) => Some(&p.prompts),
        StageKind::Dpo(d) => Some(&d.data),
        StageKind::Grpo(g) => Some(&g.prompts),
        StageKind::Distill(d) => Some(&d.data),
        StageKind::OnlineDpo(o) => Some(&o.prompts),
        StageKind::BestOfN(b) => Some(&b.prompts),
        StageKind::Compare(c) => Some(&c.data),
        StageKind::Train(_) | StageKind::Isoflop(_) | StageKind::Mixture(_) => None,
    }
}

